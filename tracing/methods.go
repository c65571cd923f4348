package tracing

import (
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/schemas"
	"capnproto.org/go/capnp/v3/std/capnp/schema"
)

// An incoming Call names its method by ids only; the server span's name
// comes from what this process knows of the schema: methods registered
// here (RegisterMethods; actors.NewServer and every outgoing call register
// theirs), then the schemas in capnp's default registry (generated code's
// RegisterSchema(schemas.DefaultRegistry)).

type methodKey struct {
	iface  uint64
	method uint16
}

var methods sync.Map // methodKey → *CallNames, of methods whose names are known

// RegisterMethods makes the names of ms known to LookupMethod and
// NamesByID, as Names does; a method registered before keeps the names
// it has.
func RegisterMethods(ms ...capnp.Method) {
	for _, m := range ms {
		if m.InterfaceName != "" && m.MethodName != "" {
			Names(m)
		}
	}
}

// LookupMethod returns the method with the given ids, with its names when
// they are known.
func LookupMethod(iface uint64, method uint16) (capnp.Method, bool) {
	if n := knownNames(iface, method); n != nil {
		return n.Method, true
	}
	return capnp.Method{InterfaceID: iface, MethodID: method}, false
}

// NamesByID are the names of the method with the given ids, as an
// incoming call names it: those registered, else those in capnp's
// default schema registry, else names that say they are unknown.
func NamesByID(iface uint64, method uint16) *CallNames {
	if n := knownNames(iface, method); n != nil {
		return n
	}
	return newNames(capnp.Method{InterfaceID: iface, MethodID: method})
}

// knownNames are the names registered for the ids, or found for them in
// the schema registry; nil: none.
func knownNames(iface uint64, method uint16) *CallNames {
	k := methodKey{iface, method}
	if n, ok := methods.Load(k); ok {
		return n.(*CallNames)
	}
	if fromSchemas(iface) {
		if n, ok := methods.Load(k); ok {
			return n.(*CallNames)
		}
	}
	return nil
}

var searched sync.Map // interface id → struct{}: registered schemas looked at once

// fromSchemas registers the methods of interface iface found in capnp's
// default schema registry; it reports whether it found any.
func fromSchemas(iface uint64) bool {
	// Only an interface the registry has is remembered: the ids come
	// from peers, and a peer can name any number of them.
	data := schemas.Find(iface)
	if data == nil {
		return false
	}
	if _, done := searched.LoadOrStore(iface, struct{}{}); done {
		return false
	}
	msg, err := capnp.Unmarshal(data)
	if err != nil {
		return false
	}
	req, err := schema.ReadRootCodeGeneratorRequest(msg)
	if err != nil {
		return false
	}
	nodes, err := req.Nodes()
	if err != nil {
		return false
	}
	for i := 0; i < nodes.Len(); i++ {
		n := nodes.At(i)
		if n.Id() != iface || n.Which() != schema.Node_Which_interface {
			continue
		}
		name, _ := n.DisplayName()
		ms, err := n.Interface().Methods()
		if err != nil {
			return false
		}
		for j := 0; j < ms.Len(); j++ {
			mn, _ := ms.At(j).Name()
			RegisterMethods(capnp.Method{InterfaceID: iface, MethodID: uint16(j), InterfaceName: name, MethodName: mn})
		}
		return ms.Len() > 0
	}
	return false
}
