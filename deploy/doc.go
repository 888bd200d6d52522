// Package deploy checks the deployment files beside it: the Helm chart in
// helm/sagapipe and the Compose stack in compose.yaml. It holds no code the
// service uses, only tests, in a Go module of its own so that Helm and the
// Compose loader never enter the main module's dependencies.
//
// No Kubernetes cluster and no Docker engine run where these tests do, so
// they check what can be checked without one: the chart is linted and
// rendered by Helm's own library with several value sets, every rendered
// object is decoded strictly into its Kubernetes API type (an unknown or
// misspelt field fails), the rendered configuration is loaded by the
// service's own LoadConfig, and the Compose file is loaded by the Compose
// specification's loader and held against the environment variables the
// service reads, taken from its source.
//
// Run them with `make deploy-check` (cd deploy && go test -count=1 ./...).
package deploy
