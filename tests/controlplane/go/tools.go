//go:build tools

// Package tools records the Kubernetes commands this module builds (the control plane, and the
// node components of tests/realnode), so that
// `go mod tidy` keeps their whole dependency graph in go.mod and go.sum. The
// build tag keeps the file out of every real build: it only pins versions.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
