//go:build unix && !linux

package conn

// setsockoptUserTimeout: the OS has no TCP_USER_TIMEOUT.
func setsockoptUserTimeout(uintptr, int) error { return nil }
