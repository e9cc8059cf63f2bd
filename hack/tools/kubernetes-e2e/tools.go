//go:build tools

// Kubernetes' own end-to-end suite, from the same module and version as hack/tools/kubernetes
// (a module of its own, so adding these leaves that one's go.mod, and its cached build, alone):
// e2e.test is built from k8s.io/kubernetes/test/e2e with `go test -c`; agnhost is the image
// the specs run; ginkgo is the runner that shards the specs over parallel processes.
package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
	_ "k8s.io/kubernetes/test/images/regression-issue-74839"
)
