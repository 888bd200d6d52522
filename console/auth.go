package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/http"
	"strings"
	"time"
)

// SessionCookie is the console's session cookie.
const SessionCookie = "sagapipe_console"

// SessionLifetime is how long a login lasts.
const SessionLifetime = 12 * time.Hour

// CSRFField is the form field that carries the CSRF token.
const CSRFField = "csrf"

// auth opens and checks sessions. A session is a random nonce and an
// expiry, signed with a key derived from the token: any instance with the
// same token accepts it, and changing the token ends every session. The
// CSRF token is the nonce signed again, so it is per session.
type auth struct {
	token   string
	key     []byte
	origins *http.CrossOriginProtection
	now     func() time.Time
}

type session struct {
	nonce   []byte
	expires time.Time
}

func newAuth(token string) *auth {
	a := &auth{token: token, origins: http.NewCrossOriginProtection(), now: time.Now}
	if token != "" {
		k := sha256.Sum256([]byte("sagapipe console session key\x00" + token))
		a.key = k[:]
	} else {
		// No token: sessions exist only to carry a CSRF token, and this
		// process's key is as good as any.
		a.key = make([]byte, 32)
		_, _ = rand.Read(a.key)
	}
	return a
}

func (a *auth) required() bool { return a.token != "" }

func (a *auth) sign(kind string, data []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write(data)
	return m.Sum(nil)
}

// session returns the request's valid session.
func (a *auth) session(r *http.Request) (session, bool) {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return session{}, false
	}
	payloadB64, macB64, ok := strings.Cut(c.Value, ".")
	if !ok {
		return session{}, false
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(payloadB64)
	mac, err2 := base64.RawURLEncoding.DecodeString(macB64)
	if err1 != nil || err2 != nil || len(payload) != 24 || !hmac.Equal(mac, a.sign("session", payload)) {
		return session{}, false
	}
	s := session{nonce: payload[:16], expires: time.Unix(int64(binary.BigEndian.Uint64(payload[16:])), 0)}
	if !a.now().Before(s.expires) {
		return session{}, false
	}
	return s, true
}

// open starts a session and sets its cookie.
func (a *auth) open(w http.ResponseWriter, r *http.Request) session {
	s := session{nonce: make([]byte, 16), expires: a.now().Add(SessionLifetime).Truncate(time.Second)}
	_, _ = rand.Read(s.nonce)
	payload := binary.BigEndian.AppendUint64(append([]byte(nil), s.nonce...), uint64(s.expires.Unix()))
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Path: Prefix,
		Value:  base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(a.sign("session", payload)),
		MaxAge: int(SessionLifetime.Seconds()), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r)})
	return s
}

// close ends the session in the browser.
func (a *auth) close(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Path: Prefix, Value: "", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: secure(r)})
}

// secure tells whether the browser reached the console over TLS (itself,
// or a proxy in front of it that says so).
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (a *auth) csrf(s session) string {
	return base64.RawURLEncoding.EncodeToString(a.sign("csrf", s.nonce))
}

var (
	errCrossOrigin = errors.New("it came from another site")
	errCSRF        = errors.New("its form token is missing or stale")
)

// checkAction refuses a cross-origin request and one without the
// session's CSRF token.
func (a *auth) checkAction(r *http.Request, s session) error {
	if err := a.origins.Check(r); err != nil {
		return errCrossOrigin
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue(CSRFField)), []byte(a.csrf(s))) != 1 {
		return errCSRF
	}
	return nil
}

// checkToken compares a login's token with the configured one.
func (a *auth) checkToken(token string) bool {
	return a.token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(a.token)) == 1
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.auth.session(r); ok || !c.auth.required() {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	c.render(w, http.StatusOK, "login.html", view{Title: "Log in", Auth: true})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !c.auth.required() {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	if err := c.auth.origins.Check(r); err != nil {
		c.render(w, http.StatusForbidden, "login.html", view{Title: "Log in", Auth: true, Error: "The login came from another site and was refused."})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if !c.auth.checkToken(r.PostFormValue("token")) {
		c.cfg.Logger.Warn("console: login refused: wrong token")
		c.render(w, http.StatusUnauthorized, "login.html", view{Title: "Log in", Auth: true, Error: "Wrong token. It is the service's api_token (SAGAPIPE_API_TOKEN)."})
		return
	}
	c.auth.open(w, r)
	c.cfg.Logger.Info("console: login")
	http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, _ view) {
	c.auth.close(w, r)
	http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
}
