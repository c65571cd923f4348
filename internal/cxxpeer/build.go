// Package cxxpeer builds the C++ reference peer of the interop tests
// (peer.c++) against the system's libcapnp.
package cxxpeer

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed peer.c++
var peerSource []byte

// ErrToolsMissing: the C++ toolchain or Cap'n Proto C++ library is absent.
var ErrToolsMissing = errors.New("C++ peer needs capnp, g++ and libcapnp-dev (Debian: apt-get install -y capnproto libcapnp-dev g++ pkg-config)")

// Build compiles the peer into dir and returns the binary's path. schema
// is interop.capnp's path, std the directory holding go.capnp.
func Build(dir, schema, std string) (string, error) {
	for _, tool := range []string{"capnp", "g++", "pkg-config"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("%w: %s not found", ErrToolsMissing, tool)
		}
	}
	if err := exec.Command("pkg-config", "--exists", "capnp-rpc").Run(); err != nil {
		return "", fmt.Errorf("%w: pkg-config finds no capnp-rpc", ErrToolsMissing)
	}
	src, err := os.ReadFile(schema)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "interop.capnp"), src, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "peer.c++"), peerSource, 0o644); err != nil {
		return "", err
	}
	if err := run(dir, "capnp", "compile", "-I", std, "-oc++", "interop.capnp"); err != nil {
		return "", err
	}
	flags, err := exec.Command("pkg-config", "--cflags", "--libs", "capnp-rpc").Output()
	if err != nil {
		return "", fmt.Errorf("pkg-config capnp-rpc: %w", err)
	}
	args := append([]string{"-std=c++17", "-O1", "-o", "peer", "peer.c++", "interop.capnp.c++"}, strings.Fields(string(flags))...)
	if err := run(dir, "g++", args...); err != nil {
		return "", err
	}
	return filepath.Join(dir, "peer"), nil
}

func run(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
