package pipe

// Middleware wraps a Handler with behaviour of its own around every call
// (Watermill's middleware model): retries with backoff (dlq.Retry),
// timeouts, logging, metrics. It sees the decoded command and its envelope,
// after the worker has skipped duplicates and before the reply is piped;
// what it returns is what the worker does with the command (a reply to
// pipe, or an error for the failure policy).
type Middleware[C any] func(next Handler[C]) Handler[C]

// Chain returns h wrapped in mw, the first outermost: Chain(h, a, b)
// handles a command as a(b(h)). Pass the result to NewStageWorker or
// Route like any Handler.
func Chain[C any](h Handler[C], mw ...Middleware[C]) Handler[C] {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}
