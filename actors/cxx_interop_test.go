package actors_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/internal/cxxpeer"
	"github.com/vatactor/vatactor/interop"
)

var (
	cxxOnce sync.Once
	cxxPath string
	cxxErr  error
	cxxDir  string
)

// cxxPeer builds the C++ reference peer once per test binary. Without the
// C++ tools the test is skipped, unless VATACTOR_REQUIRE_CXX is set (CI).
func cxxPeer(t *testing.T) string {
	t.Helper()
	cxxOnce.Do(func() {
		cxxDir, cxxErr = os.MkdirTemp("", "vatactor-cxxpeer-")
		if cxxErr != nil {
			return
		}
		std, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "capnproto.org/go/capnp/v3").Output()
		if err != nil {
			cxxErr = err
			return
		}
		schema, _ := filepath.Abs("../interop/interop.capnp")
		cxxPath, cxxErr = cxxpeer.Build(cxxDir, schema, filepath.Join(strings.TrimSpace(string(std)), "std"))
	})
	if cxxErr != nil {
		if errors.Is(cxxErr, cxxpeer.ErrToolsMissing) && os.Getenv("VATACTOR_REQUIRE_CXX") == "" {
			t.Skipf("skipping: %v", cxxErr)
		}
		t.Fatalf("building the C++ peer: %v", cxxErr)
	}
	return cxxPath
}

// startCxxServer starts the C++ reference serving Echo on loopback and
// returns its address and process (killed when the test ends).
func startCxxServer(t *testing.T, peer string) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(peer, "serve", "127.0.0.1")
	var stderr strings.Builder // not os.Stderr: a peer left running must not hold the test's output open
	cmd.Stderr = &stderr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("C++ peer stderr:\n%s", stderr.String())
		}
	})
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "port ") {
		t.Fatalf("C++ peer did not report its port: %q %v", line, err)
	}
	return "127.0.0.1:" + strings.TrimSpace(strings.TrimPrefix(line, "port ")), cmd
}

// TestInteropCxxServer: our client vat against the C++ reference serving
// Echo, over TCP.
func TestInteropCxxServer(t *testing.T) {
	addr, _ := startCxxServer(t, cxxPeer(t))
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	boot, _, err := client.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Release()
	runEchoSuite(t, interop.Echo(boot))
}

// TestInteropCxxClient: the C++ reference as the client of our server vat:
// it runs the same suite, written in C++, and reports each case.
func TestInteropCxxClient(t *testing.T) {
	peer := cxxPeer(t)
	srvImpl := interop.NewEchoServer()
	server := actors.Spawn(actors.Options{Name: "server", Bootstrap: capnp.Client(srvImpl.Client(actors.NewServer)), Logger: testLogger(t)})
	defer server.Stop()
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, peer, "client", addr.String()).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		t.Log("C++ client: " + line)
	}
	if err != nil {
		t.Fatalf("C++ client failed: %v", err)
	}
	if n := strings.Count(string(out), "ok "); n != 9 {
		t.Fatalf("C++ client reported %d passing cases, want 9", n)
	}
}
