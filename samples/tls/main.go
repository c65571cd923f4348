// Command tls runs a server vat and two client vats over mutual TLS on
// loopback: the server serves a tls.NewListener (Vat.ServeListener) and
// asks for a client certificate signed by its CA; the clients dial through
// a tls.Dialer (Options.Dial). The certificates are made here, in memory.
// The server picks each connection's bootstrap capability from its peer's
// certificate (Options.BootstrapFor), and its calls see who called
// (conn.PeerFromContext). Each client calls, then ends its connection
// gracefully: over TLS the end is close_notify and then the FIN, as over
// TCP. A third client, without a certificate, is refused before any RPC.
//
//	go run ./samples/tls
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tls:", err)
		os.Exit(1)
	}
}

// PKI is a certificate authority and what it signed.
type PKI struct {
	pool *x509.CertPool
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewPKI makes a CA.
func NewPKI() (*PKI, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vatactor sample CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &PKI{pool: pool, ca: ca, key: key}, nil
}

// Issue makes a certificate for name, for a server (on 127.0.0.1) or a
// client.
func (p *PKI) Issue(name string, server bool) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// ServerConfig asks clients for a certificate of p's.
func (p *PKI) ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: p.pool, MinVersion: tls.VersionTLS13}
}

// ClientConfig trusts p's servers and shows cert (none: no certificate).
func (p *PKI) ClientConfig(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// greeter is an Echo whose echo says whom its connection's bootstrap was
// picked for, and who the call's context says is calling.
type greeter struct {
	*interop.EchoServer
	for_ string
}

func (g *greeter) Echo(ctx context.Context, call interop.Echo_echo) error {
	caller := "nobody"
	if p, ok := conn.PeerFromContext(ctx); ok && p.TLS != nil && len(p.TLS.PeerCertificates) > 0 {
		caller = p.TLS.PeerCertificates[0].Subject.CommonName
	}
	text, err := call.Args().Text()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetText(fmt.Sprintf("%s (capability for %s, called by %s)", text, g.for_, caller))
}

// bootstrapFor gives each peer a capability of its own, named from its
// certificate.
func bootstrapFor(p conn.PeerInfo) (capnp.Client, error) {
	if p.TLS == nil || len(p.TLS.PeerCertificates) == 0 {
		return capnp.Client{}, errors.New("no client certificate")
	}
	g := &greeter{EchoServer: interop.NewEchoServer(), for_: p.TLS.PeerCertificates[0].Subject.CommonName}
	return actors.NewServer(interop.Echo_Methods(nil, g), g), nil
}

// Result is what one run saw.
type Result struct {
	Echo                 map[string]string // by client
	Client, Server       conn.Report       // alice's connection, both sides
	Refused              error             // the dial of a client without a certificate
	ClientEnd, ServerEnd error             // how each side's reading ended
}

// Run serves Echo over mutual TLS, calls it, ends gracefully, and has a
// client without a certificate try too.
func Run(ctx context.Context) (Result, error) {
	var res Result
	pki, err := NewPKI()
	if err != nil {
		return res, err
	}
	serverCert, err := pki.Issue("server", true)
	if err != nil {
		return res, err
	}
	downs := make(chan conn.Down, 4)
	server := actors.Spawn(actors.Options{Name: "tls-server", BootstrapFor: bootstrapFor,
		OnEvent: func(e conn.Event) {
			if d, ok := e.(conn.Down); ok {
				downs <- d
			}
		}})
	defer server.Stop()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	addr, err := server.ServeListener(tls.NewListener(l, pki.ServerConfig(serverCert)))
	if err != nil {
		return res, err
	}

	res.Echo = map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		cert, err := pki.Issue(name, false)
		if err != nil {
			return res, err
		}
		dialer := &tls.Dialer{Config: pki.ClientConfig(&cert)}
		client := actors.Spawn(actors.Options{Name: name, Dial: dialer.DialContext})
		defer client.Stop()
		boot, cn, err := client.Dial(ctx, "tcp", addr.String())
		if err != nil {
			return res, err
		}
		f, release := interop.Echo(boot).Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hello over mutual TLS") })
		r, err := f.Struct()
		if err == nil {
			res.Echo[name], err = r.Text()
		}
		release()
		boot.Release()
		if err != nil {
			return res, err
		}
		rep, err := cn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "done"})
		if err != nil {
			return res, err
		}
		var srv conn.Report
		select {
		case d := <-downs:
			srv = d.Report
		case <-ctx.Done():
			return res, ctx.Err()
		}
		if name == "alice" {
			res.Client, res.Server = rep, srv
			res.ClientEnd, res.ServerEnd = rep.ReadEnd, srv.ReadEnd
		}
	}

	// Without a certificate: refused in the handshake, before any RPC.
	anon := actors.Spawn(actors.Options{Name: "anonymous", Dial: (&tls.Dialer{Config: pki.ClientConfig(nil)}).DialContext})
	defer anon.Stop()
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, _, err := anon.Dial(actx, "tcp", addr.String())
	if err == nil {
		b.Release()
		return res, errors.New("a client without a certificate got a bootstrap capability")
	}
	res.Refused = err
	return res, nil
}

func run(w io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx)
	if err != nil {
		return err
	}
	for _, name := range []string{"alice", "bob"} {
		fmt.Fprintf(w, "%s: %q\n", name, res.Echo[name])
	}
	fmt.Fprintf(w, "client: %v (read ended: %v)\n", res.Client.Reason, res.ClientEnd)
	fmt.Fprintf(w, "server: %v (read ended: %v)\n", res.Server.Reason, res.ServerEnd)
	fmt.Fprintf(w, "client without a certificate: %v\n", res.Refused)
	return nil
}
