// Command tls runs a server vat and a client vat over mutual TLS on
// loopback: the server serves a tls.NewListener (Vat.ServeListener) and
// asks for a client certificate signed by its CA; the client dials through
// a tls.Dialer (Options.Dial). The certificates are made here, in memory.
// The client calls, then ends its connection gracefully: over TLS the end
// is close_notify and then the FIN, as over TCP.
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

// Result is what one run saw.
type Result struct {
	Echo                 string
	Client, Server       conn.Report
	Refused              error // the dial of a client without a certificate
	ClientEnd, ServerEnd error // how each side's reading ended
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
	clientCert, err := pki.Issue("client", false)
	if err != nil {
		return res, err
	}
	downs := make(chan conn.Down, 4)
	server := actors.Spawn(actors.Options{Name: "tls-server",
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer)),
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

	dialer := &tls.Dialer{Config: pki.ClientConfig(&clientCert)}
	client := actors.Spawn(actors.Options{Name: "tls-client", Dial: dialer.DialContext})
	defer client.Stop()
	boot, cn, err := client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return res, err
	}
	f, release := interop.Echo(boot).Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("over mutual TLS") })
	r, err := f.Struct()
	if err == nil {
		res.Echo, err = r.Text()
	}
	release()
	boot.Release()
	if err != nil {
		return res, err
	}
	if res.Client, err = cn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "done"}); err != nil {
		return res, err
	}
	select {
	case d := <-downs:
		res.Server = d.Report
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.ClientEnd, res.ServerEnd = res.Client.ReadEnd, res.Server.ReadEnd

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
	fmt.Fprintf(w, "echo: %q\n", res.Echo)
	fmt.Fprintf(w, "client: %v (read ended: %v)\n", res.Client.Reason, res.ClientEnd)
	fmt.Fprintf(w, "server: %v (read ended: %v)\n", res.Server.Reason, res.ServerEnd)
	fmt.Fprintf(w, "client without a certificate: %v\n", res.Refused)
	return nil
}
