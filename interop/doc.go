// Package interop is the Echo service (with its Counter and Callback)
// that every peer of vatactor's interop tests serves: vatactor itself,
// go-capnp's rpc.Conn and the C++ reference implementation (its schema,
// interop.capnp, is also the C++ peer's: internal/cxxpeer). The samples
// and examples use it as a small schema to call; EchoServer is its Go
// implementation.
package interop
