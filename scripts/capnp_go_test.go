package scripts_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestYourOwnSchema does what README's "Your own schema" tells a new
// user: in a fresh module outside this repository, write a schema,
// generate its code with scripts/capnp-go.sh, serve it from a vat and call
// it from another.
func TestYourOwnSchema(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module of its own")
	}
	if _, err := exec.LookPath("capnp"); err != nil {
		t.Skip("skipping: needs the capnp compiler (Debian: apt-get install capnproto)")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// vatactor as a dependency (this checkout), which brings the
	// capnproto.org/go/capnp/v3 it builds with.
	write("go.mod", "module example.com/you\n\ngo 1.24\n\nrequire github.com/vatactor/vatactor v0.0.0\n\nreplace github.com/vatactor/vatactor => "+repo+"\n")
	write("main.go", "package main\n\nimport _ \"github.com/vatactor/vatactor/actors\"\n\nfunc main() {}\n")
	run("go", "mod", "tidy")
	write("greeter/greeter.capnp", `@0xd1ce5ca1ab1e0001;
using Go = import "/go.capnp";
$Go.package("greeter");
$Go.import("example.com/you/greeter");

interface Greeter {
  greet @0 (name :Text) -> (greeting :Text);
}
`)
	out := run("bash", filepath.Join(repo, "scripts", "capnp-go.sh"), "greeter/greeter.capnp")
	if !strings.Contains(out, "wrote greeter/greeter.capnp.go") {
		t.Errorf("script said:\n%s", out)
	}
	write("main.go", `package main

import (
	"context"
	"fmt"

	"capnproto.org/go/capnp/v3"
	"github.com/vatactor/vatactor/actors"

	"example.com/you/greeter"
)

type hello struct{}

func (hello) Greet(ctx context.Context, call greeter.Greeter_greet) error {
	name, err := call.Args().Name()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetGreeting("hello, " + name)
}

func main() {
	server := actors.Spawn(actors.Options{Bootstrap: actors.NewServer(greeter.Greeter_Methods(nil, hello{}), hello{})})
	defer server.Stop()
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	client := actors.Spawn(actors.Options{})
	defer client.Stop()
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		panic(err)
	}
	defer boot.Release()
	f, release := greeter.Greeter(boot).Greet(context.Background(), func(p greeter.Greeter_greet_Params) error { return p.SetName("you") })
	defer release()
	res, err := f.Struct()
	if err != nil {
		panic(err)
	}
	text, _ := res.Greeting()
	fmt.Println(text)
	_ = capnp.Client{}
}
`)
	run("go", "mod", "tidy")
	if got := run("go", "run", "."); strings.TrimSpace(got) != "hello, you" {
		t.Errorf("the program printed %q", got)
	}
}
