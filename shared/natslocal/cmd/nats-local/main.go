// Command nats-local runs a NATS server with JetStream on loopback for `make run` and the
// payload's tests: the same server NATS ships, embedded, with its store in a project folder.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleet-ai/ray-executor/shared/natslocal"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4222", "listen address")
	store := flag.String("store", ".data/nats", "JetStream storage directory")
	conf := flag.String("config", "", "a NATS server configuration file applied first (users, permissions)")
	flag.Parse()
	srv, err := natslocal.StartConfig(*addr, *store, *conf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats-local:", err)
		os.Exit(1)
	}
	fmt.Printf("nats-local: NATS with JetStream on %s, storage in %s\n", srv.URL(), *store)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Stop()
}
