// A Go net/http server that restarts under `handover run` without losing a
// request. See README.md for what each part is for.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

func main() {
	// 1. The listening socket comes from handover (LISTEN_FDS, fd 3), not
	//    from net.Listen: every generation shares the same socket.
	listeners, err := activation.Listeners()
	if err != nil {
		log.Fatalf("socket activation: %v", err)
	}
	if len(listeners) != 1 || listeners[0] == nil {
		log.Fatalf("expected 1 listening socket in LISTEN_FDS, got %d: run me with `handover run --bind ...` (or a systemd .socket unit)", len(listeners))
	}
	ln := listeners[0]

	// 2. Draining: once stopping, every response says "Connection: close",
	//    so keep-alive clients reconnect (to the new generation) instead of
	//    sending their next request into a connection about to close.
	var draining atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid=%d\n", os.Getpid())
	})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	})

	// Open connections, to stop waiting as soon as the last one is gone.
	var open atomic.Int64
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				open.Add(1)
			case http.StateHijacked, http.StateClosed:
				open.Add(-1)
			}
		},
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	// 3. Readiness: handover stops the old generation only after READY=1.
	//    Send it once everything the server needs is loaded.
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Printf("sd_notify: %v", err)
	}

	<-stop
	// 4. Stop accepting: closing our copy of the listening socket leaves it
	//    open in handover and in the new generation, which accepts from now
	//    on. (srv.Shutdown would also close idle keep-alive connections at
	//    once: a request already on its way on one would meet a reset.)
	draining.Store(true)
	ln.Close()
	<-served

	// 5. Grace: until every connection is gone, or DRAIN_GRACE has passed.
	deadline := time.Now().Add(grace())
	for open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}

	// 6. What is left has been idle for the whole grace: Shutdown closes it
	//    and waits for requests in progress (handover's --stop-timeout
	//    bounds the whole stop).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}

// grace is DRAIN_GRACE in seconds (default 2).
func grace() time.Duration {
	if s := os.Getenv("DRAIN_GRACE"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 {
			return time.Duration(f * float64(time.Second))
		}
		log.Printf("DRAIN_GRACE=%q is not a number of seconds; using 2", s)
	}
	return 2 * time.Second
}
