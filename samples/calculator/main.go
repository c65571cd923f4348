// Command calculator runs a calculator server vat and a client vat in one
// process, talking Cap'n Proto over loopback TCP. The client exercises
// promise pipelining (calls on answers that have not arrived) and passes a
// capability of its own that the server calls back. At the end it prints
// the calls' spans as a tree, or, with OTEL_EXPORTER_OTLP_ENDPOINT set,
// sends them there (services calc-client and calc-server).
//
//	go run ./samples/calculator
package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	calc "github.com/vatactor/vatactor/samples/calculator/calculator"
	"github.com/vatactor/vatactor/samples/internal/sampletrace"
)

func main() {
	tr, err := sampletrace.Start(context.Background(), "calc-client", "calc-server")
	if err == nil {
		err = run(tr)
		err = errors.Join(err, tr.Finish(context.Background(), os.Stdout))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "calculator:", err)
		os.Exit(1)
	}
}

func run(tr *sampletrace.Tracing) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	server := actors.Spawn(actors.Options{Name: "calc-server", TracerProvider: tr.Provider("calc-server"),
		Bootstrap: capnp.Client(newCalculator())})
	defer server.Stop()
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println("server vat listening on", addr)

	client := actors.Spawn(actors.Options{Name: "calc-client", TracerProvider: tr.Provider("calc-client")})
	defer client.Stop()
	ctx, root := tr.Provider("calc-client").Tracer("samples/calculator").Start(ctx, "calculator")
	defer root.End()
	boot, cn, err := client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	defer boot.Release()
	fmt.Println("client vat connected to", cn.Peer())
	c := calc.Calculator(boot)

	failed := 0
	check := func(what string, got, want float64) {
		mark := "ok"
		if math.Abs(got-want) > 1e-9 {
			mark = "WRONG"
			failed++
		}
		fmt.Printf("%-58s = %-8g (want %g) %s\n", what, got, want, mark)
	}

	// 1. evaluate(123).read(): read is pipelined on evaluate's answer.
	v1, r1 := c.Evaluate(ctx, func(p calc.Calculator_evaluate_Params) error {
		e, err := p.NewExpression()
		e.SetLiteral(123)
		return err
	})
	defer r1()
	got, err := read(ctx, v1.Value())
	if err != nil {
		return err
	}
	check("evaluate(123).read()", got, 123)

	// 2. add := getOperator(add), used in an expression before it arrives.
	add, r2 := c.GetOperator(ctx, func(p calc.Calculator_getOperator_Params) error {
		p.SetOp(calc.Calculator_Operator_add)
		return nil
	})
	defer r2()
	mul, r3 := c.GetOperator(ctx, func(p calc.Calculator_getOperator_Params) error {
		p.SetOp(calc.Calculator_Operator_multiply)
		return nil
	})
	defer r3()
	v2, r4 := c.Evaluate(ctx, func(p calc.Calculator_evaluate_Params) error {
		e, err := p.NewExpression()
		if err != nil {
			return err
		}
		return call(e, add.Func(), literal(123), literal(45))
	})
	defer r4()
	// Take each pipelined capability once and reuse it: go-capnp v3.1.0-alpha.2
	// deadlocks when Future.Client (here Value) is asked twice for the same
	// field of an answer that has not arrived yet.
	value2 := v2.Value()
	got, err = read(ctx, value2)
	if err != nil {
		return err
	}
	check("evaluate(add(123, 45)).read()   [pipelined operator]", got, 168)

	// 3. A previous result (still a promise when sent) fed back in.
	v3, r5 := c.Evaluate(ctx, func(p calc.Calculator_evaluate_Params) error {
		e, err := p.NewExpression()
		if err != nil {
			return err
		}
		return call(e, mul.Func(), previous(value2), literal(2))
	})
	defer r5()
	got, err = read(ctx, v3.Value())
	if err != nil {
		return err
	}
	check("evaluate(multiply(<previous>, 2)).read()", got, 336)

	// 4. A function of the client's, called back by the server.
	pow := calc.Calculator_Function_ServerToClient(powFunction{})
	defer pow.Release()
	v4, r6 := c.Evaluate(ctx, func(p calc.Calculator_evaluate_Params) error {
		e, err := p.NewExpression()
		if err != nil {
			return err
		}
		return call(e, pow.AddRef(), literal(2), literal(10))
	})
	defer r6()
	got, err = read(ctx, v4.Value())
	if err != nil {
		return err
	}
	check("evaluate(pow(2, 10)).read()     [client callback]", got, 1024)

	fmt.Printf("connections: client %d, server %d\n", len(client.Conns()), len(server.Conns()))
	if failed > 0 {
		return fmt.Errorf("%d results wrong", failed)
	}
	return nil
}

func read(ctx context.Context, v calc.Calculator_Value) (float64, error) {
	f, release := v.Read(ctx, nil)
	defer release()
	r, err := f.Struct()
	if err != nil {
		return 0, err
	}
	return r.Value(), nil
}

// Expression builders.
type exprFunc func(calc.Calculator_Expression) error

func literal(x float64) exprFunc {
	return func(e calc.Calculator_Expression) error { e.SetLiteral(x); return nil }
}

func previous(v calc.Calculator_Value) exprFunc {
	return func(e calc.Calculator_Expression) error { return e.SetPreviousResult(v.AddRef()) }
}

func call(e calc.Calculator_Expression, fn calc.Calculator_Function, args ...exprFunc) error {
	e.SetCall()
	if err := e.Call().SetFunction(fn); err != nil {
		return err
	}
	l, err := e.Call().NewParams(int32(len(args)))
	if err != nil {
		return err
	}
	for i, a := range args {
		if err := a(l.At(i)); err != nil {
			return err
		}
	}
	return nil
}

// powFunction is the client's own Function: params[0] ** params[1].
type powFunction struct{}

func (powFunction) Call(ctx context.Context, call calc.Calculator_Function_call) error {
	ps, err := call.Args().Params()
	if err != nil {
		return err
	}
	if ps.Len() != 2 {
		return fmt.Errorf("pow takes 2 parameters, got %d", ps.Len())
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(math.Pow(ps.At(0), ps.At(1)))
	return nil
}
