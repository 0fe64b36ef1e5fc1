//go:build tools

// Package tools pins the command that build.sh builds, so that `go mod tidy` keeps it.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
