// Package console is the orchestrator's web console: the sagas of each
// registered saga counted by state and listed, one saga's state machine
// drawn with the path it took, its data, journal, pending timeout and the
// operator's actions (cancel, resume), the dead letters of each dead-letter
// topic grouped by origin and error class with replay and release, and a
// live view of the process's own metrics.
//
// It is server-rendered html/template with a little plain JavaScript, its
// assets embedded in the binary. The service mounts it at /ui (see
// Console.ServeHTTP) and implements Backend for it; the dead letters it
// reads and replays itself, through package dlq.
//
// With a token configured every page needs a session, which the login form
// opens with the token (an HttpOnly, SameSite=Strict cookie, Secure over
// TLS). Every action is a POST that must carry the session's CSRF token and
// come from the console's own origin.
package console
