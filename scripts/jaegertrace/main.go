// Command jaegertrace prints the newest trace of a service from a Jaeger
// query service's API as a span tree (the same tree the samples print).
//
//	go run ./scripts/jaegertrace vatactor-client
//	go run ./scripts/jaegertrace -api http://127.0.0.1:16686 -lookback 10m calc-client
//
// bash scripts/jaeger.sh trace SERVICE runs it against the Jaeger that
// script started.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/vatactor/vatactor/tracing/jaegerapi"
	"github.com/vatactor/vatactor/tracing/spantree"
)

func main() {
	api := flag.String("api", "http://127.0.0.1:16686", "the Jaeger query service")
	lookback := flag.Duration("lookback", time.Hour, "how far back to look")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: jaegertrace [-api URL] [-lookback D] SERVICE")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*api, flag.Arg(0), *lookback); err != nil {
		fmt.Fprintln(os.Stderr, "jaegertrace:", err)
		os.Exit(1)
	}
}

func run(api, service string, lookback time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	traces, err := jaegerapi.Find(ctx, api, service, 20, lookback)
	if err != nil {
		return err
	}
	if len(traces) == 0 {
		return fmt.Errorf("no trace of service %q in the last %v at %s", service, lookback, api)
	}
	fmt.Print(spantree.Format(traces[0].ReadOnlySpans()))
	return nil
}
