// Package faultproxy is a TCP proxy that tests put between lookback and a
// dependency (PostgreSQL, Redis) to take the dependency away and give it
// back: Down resets every connection and refuses new ones, Blackhole
// accepts new connections but never answers (a hung server or a dropped
// network), Up restores forwarding. Every change of mode closes the
// connections open at that moment.
package faultproxy

import (
	"io"
	"net"
	"sync"
)

type mode int

const (
	up mode = iota
	down
	blackhole
)

// Proxy forwards connections on a local address to a target.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  mode
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Start listens on a free local port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Up forwards connections again.
func (p *Proxy) Up() { p.set(up) }

// Down resets every open connection and refuses new ones.
func (p *Proxy) Down() { p.set(down) }

// Blackhole closes every open connection and accepts new ones without
// ever answering: clients hang until their own timeouts.
func (p *Proxy) Blackhole() { p.set(blackhole) }

func (p *Proxy) set(m mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m == p.mode && m == up {
		return
	}
	p.mode = m
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.set(down)
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != up {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		m := p.mode
		p.mu.Unlock()
		switch m {
		case down:
			client.Close()
			continue
		case blackhole:
			// Hold it open, say nothing; Up or Close releases it.
			p.mu.Lock()
			p.conns[client] = struct{}{}
			p.mu.Unlock()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			client.Close()
			server.Close()
			continue
		}
		p.wg.Add(2)
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
