package inspect_test

import (
	"fmt"
	"net"
	"net/http"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/inspect"
	"github.com/vatactor/vatactor/interop"
)

// Mount a vat's live view on a debug port of its own, on loopback.
func ExampleHandler() {
	vat := actors.Spawn(actors.Options{Name: "server",
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	defer vat.Stop()
	if _, err := vat.Listen("tcp", "127.0.0.1:0"); err != nil {
		panic(err)
	}

	mux := http.NewServeMux()
	mux.Handle("/debug/vat/", http.StripPrefix("/debug/vat", inspect.Handler(vat)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	resp, err := http.Get("http://" + l.Addr().String() + "/debug/vat/?format=json")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status, resp.Header.Get("Content-Type"))
	// Output: 200 OK application/json
}
