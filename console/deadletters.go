package console

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/dlq"
	"github.com/sagapipe/sagapipe/schema"
)

// ReplayGroup is the consumer group that keeps the progress of the
// console's replays of topic's letters that pass filter: the CLI's default
// group for no filter, else that group with the filter as its query
// string. A letter counts as replayed once a replay group whose filter
// it passes has committed past it.
func ReplayGroup(topic string, filter dlq.Filter) string {
	group := "sagapipe.dlq-replay." + topic
	q := url.Values{}
	// The key only as a digest: a group's name is listed to whoever may
	// list groups and logged by brokers, and keys are often personal data.
	for k, v := range map[string]string{"origin": filter.OriginTopic, "key_sha256": keyDigest(filter.Key), "class": string(filter.Class)} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if len(q) > 0 {
		group += "?" + q.Encode()
	}
	return group
}

// keyDigest is the first 16 hex digits of key's SHA-256 ("" for no key).
func keyDigest(key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}

// replayFilter is the filter of a replay group of topic: its origin and
// class, and the digest of its key.
func replayFilter(topic, group string) (f dlq.Filter, key string, ok bool) {
	base, query, _ := strings.Cut(group, "?")
	if base != "sagapipe.dlq-replay."+topic {
		return dlq.Filter{}, "", false
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return dlq.Filter{}, "", false
	}
	return dlq.Filter{OriginTopic: q.Get("origin"), Class: dlq.Class(q.Get("class"))}, q.Get("key_sha256"), true
}

// maxLetters bounds the letters a page shows (all are counted): a
// dead-letter topic can hold more than a page, or a process, should.
const maxLetters = 500

// letter is a dead letter as the console shows it.
type letter struct {
	dlq.Entry
	ID       string // "<partition>@<offset>"
	Key      string
	Headers  []header
	Value    string
	Replayed bool
	ParseErr string
}

type header struct{ Key, Value string }

// letterGroup is the letters of one origin topic and error class.
type letterGroup struct {
	OriginTopic string
	Class       dlq.Class
	Letters     []letter
}

type deadLettersView struct {
	Topic    string
	Groups   []letterGroup
	Pending  int
	Replayed int
	All      bool
	// Shown letters are on the page; Hidden ones are counted, not shown
	// (past maxLetters).
	Shown, Hidden int
}

type topicCount struct {
	Topic   string
	Pending int
	Err     string
}

func (c *Console) clientOptions(extra ...kgo.Opt) []kgo.Opt {
	return append(slices.Clone(c.cfg.ClientOptions), extra...)
}

// deadLetterTopics are the sagas' dead-letter topics and every other topic
// named "*.dlq".
func (c *Console) deadLetterTopics(ctx context.Context) ([]string, error) {
	var topics []string
	for _, d := range c.cfg.Backend.Definitions() {
		if d.DeadLetterTopic != "" && !slices.Contains(topics, d.DeadLetterTopic) {
			topics = append(topics, d.DeadLetterTopic)
		}
	}
	cl, err := kgo.NewClient(c.clientOptions()...)
	if err != nil {
		return topics, err
	}
	defer cl.Close()
	details, err := kadm.NewClient(cl).ListTopics(ctx)
	if err != nil {
		return topics, fmt.Errorf("listing the topics: %w", err)
	}
	for _, t := range details.Names() {
		if strings.HasSuffix(t, dlq.DefaultTopicSuffix) && !slices.Contains(topics, t) {
			topics = append(topics, t)
		}
	}
	slices.Sort(topics)
	return topics, nil
}

// letters reads topic's dead letters, marking those replayed, and hands
// each to visit (its value not decoded: see decode).
func (c *Console) letters(ctx context.Context, topic string, visit func(letter)) error {
	cl, err := kgo.NewClient(c.clientOptions()...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	type progress struct {
		filter dlq.Filter
		key    string // the digest of the filter's key
		at     kadm.OffsetResponses
	}
	var replays []progress
	groups, err := adm.ListGroups(ctx)
	if err != nil {
		return fmt.Errorf("listing the replay groups: %w", err)
	}
	var names []string
	for _, g := range groups.Groups() {
		if _, _, ok := replayFilter(topic, g); ok {
			names = append(names, g)
		}
	}
	if len(names) > 0 {
		for g, r := range adm.FetchManyOffsets(ctx, names...) {
			if r.Err != nil {
				return fmt.Errorf("progress of replay group %s: %w", g, r.Err)
			}
			f, key, _ := replayFilter(topic, g)
			replays = append(replays, progress{f, key, r.Fetched})
		}
	}
	err = dlq.List(ctx, dlq.ListConfig{ClientOptions: c.cfg.ClientOptions, Topic: topic}, func(e dlq.Entry, perr error) error {
		r := e.Record
		l := letter{Entry: e, ID: fmt.Sprintf("%d@%d", r.Partition, r.Offset), Key: string(r.Key)}
		if perr != nil {
			l.ParseErr = perr.Error()
		}
		for _, h := range r.Headers {
			l.Headers = append(l.Headers, header{h.Key, string(h.Value)})
		}
		for _, p := range replays {
			if o, ok := p.at.Lookup(topic, r.Partition); ok && o.Err == nil && o.At > r.Offset &&
				(perr != nil || p.filter.Match(e) && (p.key == "" || p.key == keyDigest(string(r.Key)))) {
				l.Replayed = true
			}
		}
		visit(l)
		return nil
	})
	return err
}

// knownDeadLetterTopic tells whether topic is one the console shows: a
// saga's dead-letter topic, or a topic named "*.dlq". Any other topic the
// service can read is not the console's to show or replay from.
func (c *Console) knownDeadLetterTopic(ctx context.Context, topic string) bool {
	for _, d := range c.cfg.Backend.Definitions() {
		if d.DeadLetterTopic == topic {
			return true
		}
	}
	if !strings.HasSuffix(topic, dlq.DefaultTopicSuffix) {
		return false
	}
	topics, err := c.deadLetterTopics(ctx)
	return err == nil && slices.Contains(topics, topic)
}

// decode shows a Confluent-framed Avro value as indented JSON, else says
// why it cannot.
func (c *Console) decode(ctx context.Context, value []byte) string {
	if value == nil {
		return "(no value)"
	}
	id, payload, err := schema.SplitFrame(value)
	if err == nil && c.cfg.Registry == nil {
		err = errors.New("no registry configured")
	}
	var v any
	if err == nil {
		var writer avro.Schema
		if writer, err = c.cfg.Registry.SchemaByID(ctx, id); err == nil {
			err = avro.Unmarshal(writer, payload, &v)
		}
	}
	if err != nil {
		return fmt.Sprintf("(does not decode: %v)\nraw %d bytes: %q", err, len(value), truncate(value, 512))
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprintf("(does not decode: %v)", err)
	}
	return string(out)
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// listTimeout bounds reading a dead-letter topic for a page.
const listTimeout = 20 * time.Second

func (c *Console) deadLettersIndex(w http.ResponseWriter, r *http.Request, v view) {
	ctx, cancel := context.WithTimeout(r.Context(), listTimeout)
	defer cancel()
	v.Title, v.Nav = "Dead letters", "dlq"
	topics, err := c.deadLetterTopics(ctx)
	if err != nil {
		v.Error = err.Error()
	}
	var counts []topicCount
	for _, t := range topics {
		tc := topicCount{Topic: t}
		err := c.letters(ctx, t, func(l letter) {
			if !l.Replayed && l.Class != dlq.ClassReleased {
				tc.Pending++
			}
		})
		if err != nil {
			tc.Err = err.Error()
		}
		counts = append(counts, tc)
	}
	v.Data = counts
	c.render(w, http.StatusOK, "dlq_index.html", v)
}

func (c *Console) deadLettersPage(w http.ResponseWriter, r *http.Request, v view) {
	topic := r.PathValue("topic")
	ctx, cancel := context.WithTimeout(r.Context(), listTimeout)
	defer cancel()
	if !c.knownDeadLetterTopic(ctx, topic) {
		c.notFound(w, v, "No dead-letter topic "+topic+": the console shows the sagas' dead-letter topics and topics named *"+dlq.DefaultTopicSuffix+".")
		return
	}
	v.Title, v.Nav = "Dead letters: "+topic, "dlq"
	data := deadLettersView{Topic: topic, All: r.FormValue("all") == "1"}
	byGroup := map[[2]string]*letterGroup{}
	err := c.letters(ctx, topic, func(l letter) {
		if l.Replayed {
			data.Replayed++
			if !data.All {
				return
			}
		} else if l.Class != dlq.ClassReleased {
			data.Pending++
		}
		if data.Shown >= maxLetters {
			data.Hidden++
			return
		}
		data.Shown++
		l.Value = c.decode(ctx, l.Record.Value)
		l.Record = &kgo.Record{Key: l.Record.Key, Partition: l.Record.Partition, Offset: l.Record.Offset} // the value is decoded
		k := [2]string{l.OriginTopic, string(l.Class)}
		g := byGroup[k]
		if g == nil {
			g = &letterGroup{OriginTopic: l.OriginTopic, Class: l.Class}
			byGroup[k] = g
		}
		g.Letters = append(g.Letters, l)
	})
	if err != nil {
		v.Error = "Reading " + topic + " failed: " + err.Error()
	}
	for _, g := range byGroup {
		data.Groups = append(data.Groups, *g)
	}
	slices.SortFunc(data.Groups, func(a, b letterGroup) int {
		return cmp.Or(strings.Compare(a.OriginTopic, b.OriginTopic), strings.Compare(string(a.Class), string(b.Class)))
	})
	v.Data = data
	code := http.StatusOK
	if err != nil {
		code = http.StatusBadGateway
	}
	c.render(w, code, "dlq.html", v)
}

// letterFilter reads the filter of a replay or release form.
func letterFilter(r *http.Request) (dlq.Filter, error) {
	f := dlq.Filter{OriginTopic: r.FormValue("origin"), Key: r.FormValue("key"), Class: dlq.Class(r.FormValue("class"))}
	switch f.Class {
	case "", dlq.ClassPoison, dlq.ClassExhausted, dlq.ClassPredecessorDeadLettered:
		return f, nil
	}
	return f, fmt.Errorf("class %q is not poison, exhausted or predecessor_dead_lettered", f.Class)
}

func describe(f dlq.Filter) string {
	var parts []string
	if f.OriginTopic != "" {
		parts = append(parts, "that failed on "+f.OriginTopic)
	}
	if f.Class != "" {
		parts = append(parts, "of class "+string(f.Class))
	}
	if f.Key != "" {
		parts = append(parts, fmt.Sprintf("with key %q", f.Key))
	}
	if len(parts) == 0 {
		return "every letter not replayed yet"
	}
	return "the letters not replayed yet " + strings.Join(parts, ", ")
}

func (c *Console) confirmLetterAction(w http.ResponseWriter, r *http.Request, v view) {
	topic, action := r.PathValue("topic"), r.PathValue("action")
	f, err := letterFilter(r)
	back := Prefix + "/dlq/" + url.PathEscape(topic)
	if err != nil || (action != "replay" && action != "release") || (action == "release" && f.Key == "") || !c.knownDeadLetterTopic(r.Context(), topic) {
		c.notFound(w, v, "No such action: replay takes origin, class and key; release takes a key.")
		return
	}
	cv := confirmView{Action: back + "/" + action, Back: back, Target: topic,
		Fields: map[string]string{"origin": f.OriginTopic, "class": string(f.Class), "key": f.Key}}
	if action == "replay" {
		cv.Verb = "Replay"
		cv.What = "Republishes " + describe(f) + " in " + topic + " to their original topics and partitions, in order, with their keys, values and headers. The replay's progress is committed with what it republishes: run again, it republishes nothing twice."
	} else {
		cv.Verb = "Release key"
		cv.What = fmt.Sprintf("Lets the records of key %q that are held back behind its dead letters (sequenced mode) through, in every origin partition where the key is parked. Its dead letters stay where they are.", f.Key)
	}
	v.Title, v.Nav = cv.Verb+"?", "dlq"
	v.Data = cv
	c.render(w, http.StatusOK, "confirm.html", v)
}

// actionTimeout bounds a replay or release.
const actionTimeout = 2 * time.Minute

type resultView struct {
	Title, Text string
	Back        string
}

func (c *Console) letterAction(w http.ResponseWriter, r *http.Request, v view) {
	topic, action := r.PathValue("topic"), r.PathValue("action")
	if r.PostFormValue("ask") == "1" {
		// A letter's buttons post their key (keys are often personal
		// data: not in URLs) and ask for the confirmation first.
		c.confirmLetterAction(w, r, v)
		return
	}
	if !c.knownDeadLetterTopic(r.Context(), topic) {
		c.notFound(w, v, "No dead-letter topic "+topic+".")
		return
	}
	f, err := letterFilter(r)
	back := Prefix + "/dlq/" + url.PathEscape(topic)
	v.Nav = "dlq"
	if err != nil {
		v.Title, v.Error = "Refused", err.Error()
		c.render(w, http.StatusBadRequest, "error.html", v)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), actionTimeout)
	defer cancel()
	var res resultView
	switch action {
	case "replay":
		stats, err := dlq.Replay(ctx, dlq.ReplayConfig{ClientOptions: c.cfg.ClientOptions, Topic: topic,
			Filter: f, Group: ReplayGroup(topic, f)})
		if err != nil {
			v.Title, v.Error = "The replay stopped", fmt.Sprintf("Replayed %d letter(s), then: %v. Replay again to continue: nothing is republished twice.", stats.Replayed, err)
			c.render(w, http.StatusBadGateway, "error.html", v)
			return
		}
		c.cfg.Logger.Info("console: dead letters replayed", "dlq_topic", topic, "replayed", stats.Replayed)
		res = resultView{Title: "Replayed", Text: fmt.Sprintf("Replayed %d letter(s) to their original topics (%s).", stats.Replayed, describe(f))}
	case "release":
		if f.Key == "" {
			v.Title, v.Error = "Refused", "A release needs the key to release."
			c.render(w, http.StatusBadRequest, "error.html", v)
			return
		}
		n, err := dlq.Release(ctx, dlq.ReleaseConfig{ClientOptions: c.cfg.ClientOptions, Topic: topic, Key: f.Key, OriginTopic: f.OriginTopic})
		if err != nil {
			v.Title, v.Error = "The release failed", err.Error()
			c.render(w, http.StatusBadGateway, "error.html", v)
			return
		}
		c.cfg.Logger.Info("console: dead-letter key released", "dlq_topic", topic, "partitions", n)
		res = resultView{Title: "Released", Text: fmt.Sprintf("Released key %q in %d partition(s); its consumers let its next records through.", f.Key, n)}
		if n == 0 {
			res = resultView{Title: "Nothing to release", Text: fmt.Sprintf("Key %q is not parked in %s: nothing was released.", f.Key, topic)}
		}
	default:
		c.notFound(w, v, "No such action.")
		return
	}
	res.Back = back
	v.Title, v.Data = res.Title, res
	c.render(w, http.StatusOK, "result.html", v)
}
