// Package cxxpeer builds the C++ reference programs against the system's
// libcapnp: the peer of the interop tests (peer.c++) and the C++ side of
// go run ./bench (bench.c++).
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

//go:embed bench.c++
var benchSource []byte

// ErrToolsMissing: the C++ toolchain or Cap'n Proto C++ library is absent.
var ErrToolsMissing = errors.New("C++ peer needs capnp, g++ and libcapnp-dev (Debian: apt-get install -y capnproto libcapnp-dev g++ pkg-config)")

// Build compiles the peer into dir and returns the binary's path. schema
// is interop.capnp's path, std the directory holding go.capnp.
func Build(dir, schema, std string) (string, error) {
	return build(dir, schema, std, "peer", peerSource)
}

// BuildBench compiles the C++ side of go run ./bench (bench.c++) into dir
// and returns the binary's path. schema is bench/schema/bench.capnp's
// path, std the directory holding go.capnp. It is built with -O2, as a
// user would build it.
func BuildBench(dir, schema, std string) (string, error) {
	return build(dir, schema, std, "bench", benchSource)
}

// build compiles program name from source and schema into dir.
func build(dir, schema, std, name string, source []byte) (string, error) {
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
	base := filepath.Base(schema)
	if err := os.WriteFile(filepath.Join(dir, base), src, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".c++"), source, 0o644); err != nil {
		return "", err
	}
	if err := run(dir, "capnp", "compile", "-I", std, "-oc++", base); err != nil {
		return "", err
	}
	flags, err := exec.Command("pkg-config", "--cflags", "--libs", "capnp-rpc").Output()
	if err != nil {
		return "", fmt.Errorf("pkg-config capnp-rpc: %w", err)
	}
	opt := "-O1"
	if name == "bench" {
		opt = "-O2"
	}
	args := append([]string{"-std=c++17", opt, "-o", name, name + ".c++", base + ".c++"}, strings.Fields(string(flags))...)
	if err := run(dir, "g++", args...); err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
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

// BenchSource is bench.c++, for a cache key of the built program.
func BenchSource() []byte { return benchSource }
