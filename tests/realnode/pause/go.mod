// The pod sandbox's pause process, built locally because registry.k8s.io is not
// reachable where the tests run. Standard library only: no module downloads.
module switchboard.test/pause

go 1.26.0
