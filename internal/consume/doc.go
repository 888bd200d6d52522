// Package consume is the poll-process-transact loop that the stage worker
// (pipe), the dead-letter consumer and the replay (dlq) share.
//
// A Poller polls a consumer group's client for a loop: it allows the
// rebalance the client held back since the last poll
// (kgo.BlockRebalanceOnPoll), wakes the poll for the caller's own deadline
// (a retry, a timer), and sorts the fetch errors. Those the client recovers
// from by itself (kafkaerr.Transient: a broker restarting, a lost group
// session) are logged once per outage, not once per poll, and the loop goes
// on; the rest end it, as does a closed client.
//
// Transact is the one transaction wrapper: begin, the caller's work, then
// commit or abort. Its end may outlive the caller's context by a grace
// period, so that a loop being stopped ends the transaction it opened
// instead of leaving it to the broker's timeout, while read_committed
// consumers of its partitions wait. A transaction that consumed nothing is
// committed without the group's offset machinery (see Transact).
//
// What a loop does between polls (handling records, holding a failing
// partition paused, committing offsets outside a transaction) stays with
// its owner: those differ, the skeleton does not.
package consume
