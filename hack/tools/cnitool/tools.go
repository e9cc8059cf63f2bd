//go:build tools

package tools

import _ "github.com/containernetworking/cni/cnitool"
