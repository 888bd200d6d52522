package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// No Docker engine runs here, so the Dockerfile is checked in parts: it
// runs as a non-root user, and its build command gives a static binary
// (no dynamic loader), which a distroless static base needs.
func TestDockerfileBuildsAStaticNonRootImage(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	dockerfile := string(raw)
	if !regexp.MustCompile(`(?m)^USER nonroot`).MatchString(dockerfile) || !strings.Contains(dockerfile, "distroless/static") {
		t.Fatal("the image must run as the non-root user of a static distroless base")
	}
	build := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*) -o \S+ (\./cmd/orchestrator)$`).FindStringSubmatch(dockerfile)
	if build == nil {
		t.Fatal("no 'RUN CGO_ENABLED=0 go build ... -o ... ./cmd/orchestrator' line")
	}
	out := filepath.Join(t.TempDir(), "orchestrator")
	line := build[1] + " -o " + out + " ." // the Dockerfile's command, run by a shell as RUN does
	if msg, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", line, err, msg)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary needs a dynamic loader: it is not static")
		}
	}
}
