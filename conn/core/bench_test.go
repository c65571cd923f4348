package core

import (
	"testing"
	"time"
)

// BenchmarkCoreRoundTrip is one call between two cores, as the
// connection actors drive them, with no actor, socket or encoding: what
// the protocol itself costs per call (Steps on both sides, their outputs).
func BenchmarkCoreRoundTrip(b *testing.B) {
	now := time.Now()
	server := New(Config{Bootstrap: Local(1)}, now)
	client := New(Config{}, now)
	server.Start()
	client.Start()
	// The client holds the server's bootstrap as import 0.
	recvBoot := &Received{Msg: &Bootstrap{QuestionID: 0}}
	for _, o := range server.Step(now, recvBoot) {
		if s, ok := o.(*Send); ok {
			if r, ok := s.Msg.(*Return); ok {
				server.Step(now, &Received{Msg: &Finish{QuestionID: r.AnswerID}})
			}
		}
	}
	client.Step(now, &LocalBootstrap{Call: 1})
	client.Step(now, &Received{Msg: &Return{AnswerID: 0, Results: &Payload{Content: RootCap{}, Caps: []CapDescriptor{{Kind: SenderHosted, ID: 0}}}}})
	client.Step(now, &LocalFinish{Call: 1})
	content := fields{}
	var (
		lc   LocalCall
		recv Received
		ret  Returned
		fin  LocalFinish
		call Call
		rt   Return
		f    Finish
	)
	b.ReportAllocs()
	id := CallID(1)
	for b.Loop() {
		id++
		lc = LocalCall{Call: id, Target: Cap{Kind: CapImport, ID: 0}, Method: Method{InterfaceID: 1}, Params: Payload{Content: content}}
		for _, o := range client.Step(now, &lc) {
			if s, ok := o.(*Send); ok {
				call = *s.Msg.(*Call)
			}
		}
		recv = Received{Msg: &call}
		var answer uint32
		for _, o := range server.Step(now, &recv) {
			if d, ok := o.(*Deliver); ok {
				answer = d.Answer
			}
		}
		ret = Returned{Answer: answer, Results: &Payload{Content: content}}
		for _, o := range server.Step(now, &ret) {
			if s, ok := o.(*Send); ok {
				rt = *s.Msg.(*Return)
			}
		}
		recv = Received{Msg: &rt}
		client.Step(now, &recv)
		fin = LocalFinish{Call: id}
		for _, o := range client.Step(now, &fin) {
			if s, ok := o.(*Send); ok {
				f = *s.Msg.(*Finish)
			}
		}
		recv = Received{Msg: &f}
		server.Step(now, &recv)
	}
}
