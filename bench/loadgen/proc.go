package main

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clkTck is USER_HZ, 100 on every Linux architecture Go supports for /proc times.
const clkTck = 100.0

// watched is a process whose CPU and memory the report covers (the server under test,
// the backbone nats-server).
type watched struct {
	Name string
	Pid  int
}

func parseWatched(spec string) ([]watched, error) {
	var out []watched
	if spec == "" {
		return out, nil
	}
	for _, part := range strings.Split(spec, ",") {
		name, pid, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil || name == "" || n <= 0 {
			return nil, fmt.Errorf("-pids: %q is not name=pid", part)
		}
		out = append(out, watched{name, n})
	}
	return out, nil
}

// cpuTimes is (utime, stime) in seconds, all threads, from /proc/<pid>/stat.
func cpuTimes(pid int) (float64, float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return u / clkTck, k / clkTck, nil
}

// rssKiB is VmRSS from /proc/<pid>/status.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return -1
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// machineBusy is the CPU time the whole machine spent busy (all cores), seconds.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	total := 0.0
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		total += x
	}
	return total / clkTck
}

// cpuWindow measures CPU of the watched processes, of this process and of the machine.
type cpuWindow struct {
	procs []watched
	u0    []float64
	k0    []float64
	self0 float64
	busy0 float64
	t0    time.Time
}

func startWindow(procs []watched) *cpuWindow {
	w := &cpuWindow{procs: procs, u0: make([]float64, len(procs)), k0: make([]float64, len(procs))}
	for i, p := range procs {
		w.u0[i], w.k0[i], _ = cpuTimes(p.Pid)
	}
	w.self0 = selfCPU()
	w.busy0 = machineBusy()
	w.t0 = time.Now()
	return w
}

// end gives {name: {user_s, sys_s, cpu_s}}, the load generator's CPU, the machine's,
// and the window's wall time (wall_s). Processes given under one name (the edge
// processes of one target) are summed.
func (w *cpuWindow) end() map[string]any {
	out := map[string]any{}
	user, sys := map[string]float64{}, map[string]float64{}
	for i, p := range w.procs {
		u, k, err := cpuTimes(p.Pid)
		if err != nil {
			out[p.Name] = map[string]any{"error": err.Error()}
			continue
		}
		user[p.Name] += u - w.u0[i]
		sys[p.Name] += k - w.k0[i]
	}
	for name, u := range user {
		if _, failed := out[name]; failed {
			continue
		}
		out[name] = map[string]any{"user_s": round3(u), "sys_s": round3(sys[name]), "cpu_s": round3(u + sys[name])}
	}
	out["loadgen"] = map[string]any{"cpu_s": round3(selfCPU() - w.self0)}
	out["machine"] = map[string]any{"cpu_s": round3(machineBusy() - w.busy0)}
	out["wall_s"] = round3(time.Since(w.t0).Seconds())
	return out
}

// rssAll gives each name's VmRSS in KiB, summed over the processes of that name.
func rssAll(procs []watched) map[string]int64 {
	out := map[string]int64{}
	for _, p := range procs {
		out[p.Name] += rssKiB(p.Pid)
	}
	return out
}

func round3(v float64) float64 {
	return math.Round(v*1000) / 1000
}
