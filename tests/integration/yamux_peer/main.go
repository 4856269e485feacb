// Command yamux_peer is the reference yamux implementation (github.com/hashicorp/yamux) as a
// real peer for netguard's interoperability tests (tests/integration/test_yamux_interop.py).
//
// It runs one yamux session over one TCP connection: listening on a loopback address
// (-listen, it prints "LISTEN <port>" and takes the first connection), dialling one
// (-connect), or inherited as file descriptor 3 (-fd 3, a connection on which the test has
// already logged in to the gateway). -role says which end of the session it is.
//
// Every stream the peer opens is accepted (unless -accept=false) and echoed, honouring
// half-close: after the peer's FIN what is left is written back, then this end's FIN.
// With -streams it opens streams itself, all at once, and verifies what comes back:
//
//	<size>        write <size> bytes of a pattern, read them back, then FIN
//	reset         write "RESET\n" and expect the stream to be reset (RST) by the peer
//	refuse:<svc>  (with -open) open <svc> and expect an "ERR " line then EOF
//
// With -open <service> each <size> stream first writes "OPEN <service>\r\n" and expects
// "OK OPEN <service>\r\n" in front of the echo (netguard's per-stream open, docs/protocol.md
// section 5.1). Results go to stdout, one line each:
//
//	ECHO <id> <bytes> eof|reset|error <text>   a stream the peer opened has ended
//	STREAM <index> <id> ok <bytes> | reset | refused <line> | fail <text>
//	PING ok | PING fail <text>                 an explicit ping, after the streams
//	GOAWAY sent                                -goaway: after the streams
//	DONE ok=<n> fail=<n>                       the streams of -streams have all ended
//	STREAMS open=<n>                           then: no stream is left (the peer closed all)
//	SESSION end <text>                         the session is over; the program exits
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

var out = struct {
	sync.Mutex
	w *bufio.Writer
}{w: bufio.NewWriter(os.Stdout)}

// say prints one result line at once.
func say(format string, args ...interface{}) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(out.w, format+"\n", args...)
	out.w.Flush()
}

// pattern is the payload of stream index: every stream's bytes differ.
func pattern(index, size int) []byte {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + index*13 + i/251)
	}
	return data
}

// echo copies a stream back to its peer until the peer's FIN, then closes this side.
func echo(stream *yamux.Stream) {
	n, err := io.Copy(stream, stream)
	switch {
	case err == nil:
		stream.Close()
		say("ECHO %d %d eof", stream.StreamID(), n)
	case errors.Is(err, yamux.ErrConnectionReset):
		say("ECHO %d %d reset", stream.StreamID(), n)
	default:
		say("ECHO %d %d error %v", stream.StreamID(), n, err)
	}
}

// run opens one stream per spec and checks what comes back; it says whether it went well.
func run(session *yamux.Session, index int, spec, service string) bool {
	stream, err := session.OpenStream()
	if err != nil {
		say("STREAM %d 0 fail open: %v", index, err)
		return false
	}
	id := stream.StreamID()
	switch {
	case spec == "reset":
		if _, err := stream.Write([]byte("RESET\n")); err != nil {
			say("STREAM %d %d fail write: %v", index, id, err)
			return false
		}
		_, err := io.ReadAll(stream)
		if errors.Is(err, yamux.ErrConnectionReset) {
			say("STREAM %d %d reset", index, id)
			return true
		}
		say("STREAM %d %d fail expected a reset, got %v", index, id, err)
		return false
	case strings.HasPrefix(spec, "refuse:"):
		fmt.Fprintf(stream, "OPEN %s\r\n", strings.TrimPrefix(spec, "refuse:"))
		got, err := io.ReadAll(stream)
		stream.Close()
		if err == nil && bytes.HasPrefix(got, []byte("ERR ")) && bytes.HasSuffix(got, []byte("\r\n")) {
			say("STREAM %d %d refused %s", index, id, strings.TrimSpace(string(got)))
			return true
		}
		say("STREAM %d %d fail refusal %q %v", index, id, got, err)
		return false
	}
	size, err := strconv.Atoi(spec)
	if err != nil {
		say("STREAM %d %d fail bad spec %q", index, id, spec)
		return false
	}
	payload := pattern(index, size)
	var head []byte
	expected := payload
	if service != "" {
		head = []byte("OPEN " + service + "\r\n")
		expected = append([]byte("OK OPEN "+service+"\r\n"), payload...)
	}
	// The echo is read in full before this end's FIN: the yamux of Debian (2019) returns EOF
	// from Read as soon as the receive buffer is empty once this end has sent its FIN
	// (upstream fixed reads on half-closed streams in 2024). That the peer's FIN follows is
	// seen from the session's stream count (see waitClosed).
	written := make(chan error, 1)
	go func() {
		_, err := stream.Write(append(head, payload...))
		written <- err
	}()
	got := make([]byte, len(expected))
	n, err := io.ReadFull(stream, got)
	if werr := <-written; werr != nil {
		say("STREAM %d %d fail write: %v", index, id, werr)
		return false
	}
	if err != nil {
		say("STREAM %d %d fail read after %d bytes: %v", index, id, n, err)
		return false
	}
	if !bytes.Equal(got, expected) {
		say("STREAM %d %d fail the %d bytes differ", index, id, len(got))
		return false
	}
	if err := stream.Close(); err != nil {
		say("STREAM %d %d fail close: %v", index, id, err)
		return false
	}
	say("STREAM %d %d ok %d", index, id, len(payload))
	return true
}

// waitClosed reports when no stream is left in the session: each stream this end opened is
// forgotten once both FINs have passed (or an RST), so "STREAMS open=0" says the peer has
// closed every stream. Bounded by -deadline.
func waitClosed(session *yamux.Session) {
	for session.NumStreams() > 0 && !session.IsClosed() {
		time.Sleep(10 * time.Millisecond)
	}
	say("STREAMS open=%d", session.NumStreams())
}

// connection gives the session's connection as the flags say.
func connection(listen, connect string, fd int) (net.Conn, error) {
	switch {
	case fd > 0:
		file := os.NewFile(uintptr(fd), "inherited")
		defer file.Close() // FileConn holds its own duplicate
		return net.FileConn(file)
	case connect != "":
		return net.Dial("tcp", connect)
	}
	listener, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	defer listener.Close()
	say("LISTEN %d", listener.Addr().(*net.TCPAddr).Port)
	return listener.Accept()
}

func main() {
	role := flag.String("role", "server", "which end of the yamux session: client or server")
	listen := flag.String("listen", "", "listen on this address and take one connection")
	connect := flag.String("connect", "", "dial this address")
	fd := flag.Int("fd", 0, "use this inherited file descriptor as the connection")
	streams := flag.String("streams", "", "comma-separated streams to open (see above)")
	service := flag.String("open", "", "open this netguard service on each stream first")
	accept := flag.Bool("accept", true, "accept and echo the peer's streams")
	backlog := flag.Int("backlog", 256, "yamux AcceptBacklog")
	keepalive := flag.Duration("keepalive", 100*time.Millisecond, "yamux KeepAliveInterval")
	goAway := flag.Bool("goaway", false, "send go-away after the streams")
	stay := flag.Bool("stay", true, "after the streams, stay until the peer ends the session")
	deadline := flag.Duration("deadline", 120*time.Second, "exit with status 3 after this (a hang guard)")
	flag.Parse()
	time.AfterFunc(*deadline, func() {
		say("SESSION end deadline")
		os.Exit(3)
	})

	conn, err := connection(*listen, *connect, *fd)
	if err != nil {
		say("SESSION end connection: %v", err)
		os.Exit(2)
	}
	config := yamux.DefaultConfig()
	config.AcceptBacklog = *backlog
	config.EnableKeepAlive = true
	config.KeepAliveInterval = *keepalive
	config.ConnectionWriteTimeout = 10 * time.Second
	config.LogOutput = os.Stderr
	var session *yamux.Session
	if *role == "client" {
		session, err = yamux.Client(conn, config)
	} else {
		session, err = yamux.Server(conn, config)
	}
	if err != nil {
		say("SESSION end setup: %v", err)
		os.Exit(2)
	}
	if *accept {
		go func() {
			for {
				stream, err := session.AcceptStream()
				if err != nil {
					return
				}
				go echo(stream)
			}
		}()
	}
	if *streams != "" {
		specs := strings.Split(*streams, ",")
		results := make(chan bool, len(specs))
		for index, spec := range specs {
			go func(index int, spec string) { results <- run(session, index, spec, *service) }(index, spec)
		}
		ok, failed := 0, 0
		for range specs {
			if <-results {
				ok++
			} else {
				failed++
			}
		}
		if _, err := session.Ping(); err != nil {
			say("PING fail %v", err)
		} else {
			say("PING ok")
		}
		say("DONE ok=%d fail=%d", ok, failed)
		waitClosed(session)
		if *goAway {
			if err := session.GoAway(); err != nil {
				say("GOAWAY fail %v", err)
			} else {
				say("GOAWAY sent")
			}
		}
		if !*stay {
			session.Close()
		}
	}
	<-session.CloseChan()
	// Let the echo goroutines report how their streams ended.
	time.Sleep(50 * time.Millisecond)
	say("SESSION end closed")
}
