package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vatactor/vatactor/actors"
	calc "github.com/vatactor/vatactor/samples/calculator/calculator"
)

// calculator is the server's Calculator.
type calculator struct{}

func newCalculator() calc.Calculator {
	impl := calculator{}
	return calc.Calculator(actors.NewServer(calc.Calculator_Methods(nil, &impl), &impl))
}

func (*calculator) Evaluate(ctx context.Context, call calc.Calculator_evaluate) error {
	expr, err := call.Args().Expression()
	if err != nil {
		return err
	}
	call.Go() // evaluation calls other capabilities: let other calls in meanwhile
	v, err := evaluate(ctx, expr, nil)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetValue(calc.Calculator_Value_ServerToClient(value(v)))
}

func (*calculator) GetOperator(ctx context.Context, call calc.Calculator_getOperator) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetFunc(calc.Calculator_Function_ServerToClient(operator(call.Args().Op())))
}

// evaluate computes expr; params are the arguments inside a function body.
func evaluate(ctx context.Context, expr calc.Calculator_Expression, params []float64) (float64, error) {
	switch expr.Which() {
	case calc.Calculator_Expression_Which_literal:
		return expr.Literal(), nil
	case calc.Calculator_Expression_Which_previousResult:
		f, release := expr.PreviousResult().Read(ctx, nil)
		defer release()
		r, err := f.Struct()
		if err != nil {
			return 0, err
		}
		return r.Value(), nil
	case calc.Calculator_Expression_Which_parameter:
		i := expr.Parameter()
		if int(i) >= len(params) {
			return 0, fmt.Errorf("parameter %d out of range", i)
		}
		return params[i], nil
	case calc.Calculator_Expression_Which_call:
		exprs, err := expr.Call().Params()
		if err != nil {
			return 0, err
		}
		args := make([]float64, exprs.Len())
		for i := range args {
			if args[i], err = evaluate(ctx, exprs.At(i), params); err != nil {
				return 0, err
			}
		}
		f, release := expr.Call().Function().Call(ctx, func(p calc.Calculator_Function_call_Params) error {
			l, err := p.NewParams(int32(len(args)))
			if err != nil {
				return err
			}
			for i, a := range args {
				l.Set(i, a)
			}
			return nil
		})
		defer release()
		r, err := f.Struct()
		if err != nil {
			return 0, err
		}
		return r.Value(), nil
	}
	return 0, errors.New("unknown expression")
}

// value is a computed number, handed out as a capability.
type value float64

func (v value) Read(ctx context.Context, call calc.Calculator_Value_read) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(float64(v))
	return nil
}

// operator is one of the server's built-in functions.
type operator calc.Calculator_Operator

func (op operator) Call(ctx context.Context, call calc.Calculator_Function_call) error {
	ps, err := call.Args().Params()
	if err != nil {
		return err
	}
	if ps.Len() != 2 {
		return fmt.Errorf("%v takes 2 parameters, got %d", calc.Calculator_Operator(op), ps.Len())
	}
	a, b := ps.At(0), ps.At(1)
	var v float64
	switch calc.Calculator_Operator(op) {
	case calc.Calculator_Operator_add:
		v = a + b
	case calc.Calculator_Operator_subtract:
		v = a - b
	case calc.Calculator_Operator_multiply:
		v = a * b
	case calc.Calculator_Operator_divide:
		v = a / b
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(v)
	return nil
}
