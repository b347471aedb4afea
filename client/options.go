package client

import (
	"crypto/tls"
	"log/slog"
	"time"

	"google.golang.org/grpc"
)

// --- client ------------------------------------------------------------------

// An Option configures New.
type Option func(*config)

type config struct {
	tls      *tls.Config
	token    string
	tokenSet bool
	dialOpts []grpc.DialOption
	logger   *slog.Logger
	retry    retryPolicy
}

func defaultConfig() config {
	return config{
		logger: slog.New(slog.DiscardHandler),
		retry:  retryPolicy{attempts: 5, base: 50 * time.Millisecond, max: 2 * time.Second},
	}
}

// WithTLS makes the client speak TLS with cfg on every connection it
// opens, to the seeds and to the nodes it learns of. The default is
// plaintext. pki.ClientTLSConfig builds the configuration a quorumq cluster
// expects (its CA; a client certificate, if the client authenticates with
// one).
func WithTLS(cfg *tls.Config) Option { return func(c *config) { c.tls = cfg } }

// WithToken authenticates every call with a bearer token (gRPC metadata
// "authorization: Bearer <token>"), for clients that do not present a
// client certificate. A token is only ever sent over TLS: New fails with
// ErrInvalid unless WithTLS is given too, and the credentials refuse a
// connection without transport security.
func WithToken(token string) Option {
	return func(c *config) { c.token, c.tokenSet = token, true }
}

// WithDialOptions adds gRPC dial options to every connection the client
// opens (interceptors, keepalive, message size limits...). They are applied
// after the client's own, so they win.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOpts = append(c.dialOpts, opts...) }
}

// WithLogger sets where the client logs (retries, route changes, failed
// acks); by default it logs nothing.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithRetry bounds retries: a call is tried at most maxAttempts times (1 =
// never retried), waiting between attempts a jittered backoff that starts
// at base and doubles up to max. The default is 5 attempts, 50 ms, 2 s. No
// wait outlives the caller's context deadline.
func WithRetry(maxAttempts int, base, max time.Duration) Option {
	return func(c *config) {
		c.retry = retryPolicy{attempts: maxAttempts, base: base, max: max}.normalized()
	}
}

// --- producer ----------------------------------------------------------------

// A ProducerOption configures NewProducer.
type ProducerOption func(*producerConfig)

type producerConfig struct {
	linger      time.Duration
	maxMessages int
	maxBytes    int
	maxInFlight int
	timeout     time.Duration
}

func defaultProducerConfig() producerConfig {
	return producerConfig{linger: 5 * time.Millisecond, maxMessages: 500, maxBytes: 1 << 20, maxInFlight: 64, timeout: 30 * time.Second}
}

// Linger is how long a batch waits for more messages before it is sent
// (default 5 ms). A batch also goes as soon as it is full.
func Linger(d time.Duration) ProducerOption {
	return func(c *producerConfig) { c.linger = max(d, 0) }
}

// MaxBatchMessages caps a batch's messages (default 500, at most 1000).
func MaxBatchMessages(n int) ProducerOption {
	return func(c *producerConfig) { c.maxMessages = min(max(n, 1), maxEnqueueMessages) }
}

// MaxBatchBytes caps a batch's payload, key and header bytes (default
// 1 MiB, at most 8 MiB). A single larger message is sent alone.
func MaxBatchBytes(n int) ProducerOption {
	return func(c *producerConfig) { c.maxBytes = min(max(n, 1), maxEnqueueBytes) }
}

// MaxInFlight caps the batches sent and not yet answered (default 64).
// When it is reached, Send blocks.
func MaxInFlight(n int) ProducerOption {
	return func(c *producerConfig) { c.maxInFlight = max(n, 1) }
}

// SendTimeout bounds one batch's enqueue, retries included (default 30 s).
// The contexts given to Send only bound the wait to hand a message over.
func SendTimeout(d time.Duration) ProducerOption {
	return func(c *producerConfig) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// --- receive and consume -----------------------------------------------------

// A ReceiveOption configures Receive. Wait, Visibility and ConsumerName
// configure both Receive and Consume.
type ReceiveOption interface{ configureReceive(*receiveConfig) }

// A ConsumeOption configures Consume.
type ConsumeOption interface{ configureConsume(*consumeConfig) }

type receiveConfig struct {
	wait       time.Duration
	visibility time.Duration // 0 = the queue's default
	consumer   string
}

type consumeConfig struct {
	receiveConfig
	prefetch        int
	concurrency     int
	autoExtend      bool
	ackMax          int
	ackLinger       time.Duration
	shutdownTimeout time.Duration
}

func defaultConsumeConfig() consumeConfig {
	return consumeConfig{
		receiveConfig:   receiveConfig{wait: 5 * time.Second, visibility: 30 * time.Second},
		prefetch:        100,
		concurrency:     10,
		autoExtend:      true,
		ackMax:          100,
		ackLinger:       10 * time.Millisecond,
		shutdownTimeout: 30 * time.Second,
	}
}

// Wait is how long a Receive long-polls for a message when none is ready
// (at most 20 s). Receive's default is 0: answer at once. Consume polls with
// 5 s by default; a cancelled Consume lets its poll in flight end.
type Wait time.Duration

func (w Wait) configureReceive(c *receiveConfig) { c.wait = time.Duration(w) }
func (w Wait) configureConsume(c *consumeConfig) { c.wait = time.Duration(w) }

// Visibility is the lease of each received message: how long it stays
// invisible to other consumers unless acked, requeued or extended.
// Receive's default is the queue's; Consume's is 30 s.
type Visibility time.Duration

func (v Visibility) configureReceive(c *receiveConfig) { c.visibility = time.Duration(v) }
func (v Visibility) configureConsume(c *consumeConfig) { c.visibility = time.Duration(v) }

// ConsumerName names the consumer in the server's records.
type ConsumerName string

func (n ConsumerName) configureReceive(c *receiveConfig) { c.consumer = string(n) }
func (n ConsumerName) configureConsume(c *consumeConfig) { c.consumer = string(n) }

// Prefetch is how many messages Consume holds at most: received and not yet
// finished, whether a handler runs them or they wait for one (default 100).
type Prefetch int

func (p Prefetch) configureConsume(c *consumeConfig) { c.prefetch = max(int(p), 1) }

// Concurrency is how many handlers Consume runs at once (default 10).
type Concurrency int

func (n Concurrency) configureConsume(c *consumeConfig) { c.concurrency = max(int(n), 1) }

// AutoExtend makes Consume extend the lease of every message it holds, in
// batches, when a third of the visibility is left, so that neither a long
// handler nor a wait in the prefetch buffer lets the lease run out
// (default true).
type AutoExtend bool

func (a AutoExtend) configureConsume(c *consumeConfig) { c.autoExtend = bool(a) }

// ShutdownTimeout bounds how long Consume, once its context is cancelled,
// lets running handlers finish before it cancels their context (default
// 30 s).
type ShutdownTimeout time.Duration

func (d ShutdownTimeout) configureConsume(c *consumeConfig) {
	c.shutdownTimeout = max(time.Duration(d), 0)
}

type ackBatch struct {
	max    int
	linger time.Duration
}

func (a ackBatch) configureConsume(c *consumeConfig) { c.ackMax, c.ackLinger = a.max, a.linger }

// AckBatch makes Consume send acks in batches of up to size receipts (at
// most 1000), waiting at most linger for a batch to fill (default 100 and
// 10 ms). AckBatch(1, 0) acks each message on its own.
func AckBatch(size int, linger time.Duration) ConsumeOption {
	return ackBatch{max: min(max(size, 1), maxLeaseBatch), linger: max(linger, 0)}
}
