package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vatactor/vatactor/internal/cxxpeer"
)

// The C++ reference implementation, built from Debian's libcapnp
// (internal/cxxpeer's bench.c++, -O2): C++ calling C++, and C++ against
// vatactor both ways. A C++ client runs as a process of its own that
// measures itself (the same ops, warm-up and clock as measure's), so its
// allocations are not counted.
const (
	implCxx      = "c++"          // C++ client, C++ server
	implVatToCxx = "vatactor>c++" // vatactor client, C++ server
	implCxxToVat = "c++>vatactor" // C++ client, vatactor server
)

// cxxImpls are the implementations that need the C++ tools.
var cxxImpls = []string{implCxx, implVatToCxx, implCxxToVat}

var (
	cxxOnce sync.Once
	cxxBin  string
	cxxErr  error
)

// cxxBench builds the C++ bench program once per process, into a cache
// directory keyed by its source and schema (a rebuild takes ~30 s).
func cxxBench() (string, error) {
	cxxOnce.Do(func() {
		std, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "capnproto.org/go/capnp/v3").Output()
		if err != nil {
			cxxErr = fmt.Errorf("finding go.capnp (run the bench from the module's directory): %w", err)
			return
		}
		schema, err := filepath.Abs(filepath.Join(moduleRoot(), "bench", "schema", "bench.capnp"))
		if err != nil {
			cxxErr = err
			return
		}
		src, err := os.ReadFile(schema)
		if err != nil {
			cxxErr = err
			return
		}
		sum := sha256.Sum256(append(src, cxxpeer.BenchSource()...))
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		dir := filepath.Join(cache, "vatactor", "cxxbench", hex.EncodeToString(sum[:8]))
		if bin := filepath.Join(dir, "bench"); fileExists(bin) {
			cxxBin = bin
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			cxxErr = err
			return
		}
		cxxBin, cxxErr = cxxpeer.BuildBench(dir, schema, filepath.Join(strings.TrimSpace(string(std)), "std"))
	})
	return cxxBin, cxxErr
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moduleRoot is the directory of this module's go.mod.
func moduleRoot() string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "."
	}
	return strings.TrimSpace(string(out))
}

// startCxxServer starts the C++ Bench server on loopback.
func startCxxServer() (*serverSide, error) {
	bin, err := cxxBench()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "127.0.0.1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "port ") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("the C++ server did not report its port: %q %v", line, err)
	}
	return &serverSide{
		addr:  "127.0.0.1:" + strings.TrimSpace(strings.TrimPrefix(line, "port ")),
		conns: func() int { return 0 },
		shutdown: func(ctx context.Context) error {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return ctx.Err()
		},
	}, nil
}

// cxxClient reports whether impl's client is the C++ program.
func cxxClient(impl string) bool { return impl == implCxx || impl == implCxxToVat }
