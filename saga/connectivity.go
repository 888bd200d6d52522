package saga

import (
	"net"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// outageGrace is how long the client may fail to reach any broker before
// the runtime calls the cluster out of reach (and itself unready): a
// broker restarting in a rolling restart is ridden through below it.
const outageGrace = 5 * time.Second

// connectivity follows whether the runtime's client reaches the cluster,
// from kgo hooks on every connection attempt and every response read. The
// cluster is out of reach when attempts have failed and nothing was read
// from any broker for outageGrace; one broker away while another answers
// (a rolling restart) is no outage.
type connectivity struct {
	mu       sync.Mutex
	read     bool      // a response was read once: the client reached the cluster
	lastRead time.Time // the last response read from any broker
	failed   bool      // an attempt failed since lastRead
	down     bool
	// onChange is called, outside mu, when the cluster goes out of reach
	// or comes back.
	onChange func(reachable bool, err error)
}

var (
	_ kgo.HookBrokerConnect = (*connectivity)(nil)
	_ kgo.HookBrokerRead    = (*connectivity)(nil)
)

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (c *connectivity) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		c.observe(false, err)
	}
}

// OnBrokerRead implements kgo.HookBrokerRead.
func (c *connectivity) OnBrokerRead(_ kgo.BrokerMetadata, _ int16, _ int, _, _ time.Duration, err error) {
	c.observe(err == nil, err)
}

// observe records an attempt that succeeded (ok), failed (err), or
// neither (both zero: a check of the grace only), and reports a change.
func (c *connectivity) observe(ok bool, err error) {
	now := time.Now()
	c.mu.Lock()
	if c.lastRead.IsZero() {
		c.lastRead = now // the grace counts from the first attempt
	}
	switch {
	case ok:
		c.lastRead, c.failed, c.read = now, false, true
	case err != nil:
		c.failed = true
	}
	down := c.failed && now.Sub(c.lastRead) >= outageGrace
	changed := down != c.down
	c.down = down
	c.mu.Unlock()
	if changed && c.onChange != nil {
		c.onChange(!down, err)
	}
}

// reachable reports whether the cluster is in reach (see connectivity).
// A client that has not read anything yet has not reached the cluster.
func (c *connectivity) reachable() bool {
	c.observe(false, nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read && !c.down
}

// out reports whether the cluster is known to be out of reach: attempts
// failed for outageGrace (a client yet to try is not).
func (c *connectivity) out() bool {
	c.observe(false, nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down
}
