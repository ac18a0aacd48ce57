// Command coredns is CoreDNS with only the plugins the real-node cluster's Corefile
// uses (the full build pulls in every cloud provider's SDK): cluster DNS for
// Services and pods from the API server, answers cached, the rest refused.
// tests/realnode runs it. v1.13.2 is the newest release whose requirements raise
// none of this module's versions, so adding it left the control plane unchanged.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// Plugin order in a server block (upstream keeps this list in plugin.cfg).
	dnsserver.Directives = []string{"bind", "log", "health", "ready", "errors", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
