package service_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/examples/orders"
	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/service"
)

var update = flag.Bool("update", false, "copy the console's screenshots into docs/console")

// browser starts Debian's chromium, headless, for the test; the test fails
// when it is not installed. Its cleanup stops the browser.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v): the console's browser tests need it; install it as root with: apt-get install -y chromium", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.WindowSize(1280, 800))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // chromium refuses its sandbox to root
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc() // waits for the browser to exit
	})
	// The browser starts now, bound to ctx, not to a shorter context of a
	// step.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// screenshots saves the page as it looks now as <name>.png in
// $SAGAPIPE_CONSOLE_SCREENSHOTS or a temporary directory, and with -update
// in docs/console.
func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	for _, d := range []string{dir, map[bool]string{true: "../docs/console"}[*update]} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// An operator logs in, finds a compensated saga and sees its diagram and
// journal, replays a dead letter and sees it leave the list, cancels a
// saga in flight and sees it compensate, and looks at the live view, in
// chromium, against a service on the embedded stack.
func TestConsoleInBrowser(t *testing.T) {
	ctx := browser(t)
	shots := os.Getenv("SAGAPIPE_CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() }) // after the participants stop
	// Some payments are declined (compensated sagas), some replies lost: with
	// a long step timeout their sagas stay in flight through the test.
	s := ordersWorldWith(t, stack, 10*time.Minute, orders.Faults{DeclineRate: 0.25, LostReplyRate: 0.25})
	const token = "console-test-token"
	svc := startService(t, service.Config{Brokers: stack.KafkaAddrs(), Registry: service.RegistryConfig{URL: stack.RegistryURL()},
		HTTPAddr: "127.0.0.1:0", APIToken: token, JaegerUIURL: "http://127.0.0.1:16686", ShutdownGrace: 10 * time.Second}, s)
	base := svc.http.URL
	waitReady(t, base)

	// Two dead letters: a cancel of a saga not started yet, and bytes
	// without an envelope. Then the saga starts, so that a replay of the
	// cancel reaches it.
	cl, err := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(pctx, saga.CancelRecord("orders", "o-ghost", "test"),
		&kgo.Record{Topic: s.InboxTopic(), Key: []byte("o-garbage"), Value: []byte("no envelope")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for i := range 16 {
		id := fmt.Sprintf("o-%02d", i+1)
		if code, body := do(t, "POST", base+"/api/sagas/orders?id="+id, token, strings.Replace(validOrder, `"o-1"`, `"`+id+`"`, 1)); code != 202 {
			t.Fatalf("start %s: %d %v", id, code, body)
		}
	}
	// Sagas settle: some compensated, some waiting for a lost reply.
	var waiting string
	for deadline := time.Now().Add(30 * time.Second); waiting == ""; {
		_, list := do(t, "GET", base+"/api/sagas/orders?limit=100", token, "")
		compensated := list["counts"].(map[string]any)["compensated"].(float64)
		sagas, _ := list["sagas"].([]any)
		for _, v := range sagas {
			st := v.(map[string]any)
			since, _ := time.Parse(time.RFC3339Nano, st["since"].(string))
			if (st["state"] == "inventory.Pending" || st["state"] == "payment.Pending") && time.Since(since) > 2*time.Second && compensated > 0 {
				waiting = st["id"].(string)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no compensated saga and saga waiting on a step that can be compensated: %v", list)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, body := do(t, "POST", base+"/api/sagas/orders?id=o-ghost", token, strings.Replace(validOrder, `"o-1"`, `"o-ghost"`, 1)); code != 202 {
		t.Fatalf("start o-ghost: %d %v", code, body)
	}

	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(tctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) any {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}

	// Log in.
	run("open the console", chromedp.EmulateViewport(1280, 800), chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	screenshot(t, ctx, shots, "login")
	run("log in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Submit(chromedp.CSS("#token")),
		chromedp.WaitVisible(chromedp.CSS("ul.counts")))
	screenshot(t, ctx, shots, "sagas")
	// The skip link comes first from the keyboard.
	run("tab", chromedp.KeyEvent(kb.Tab))
	if got := eval(`document.activeElement.textContent`); got != "Skip to content" {
		t.Errorf("the first Tab focuses %q, not the skip link", got)
	}

	// Find a compensated saga and open it.
	run("filter compensated", chromedp.Click(chromedp.CSS(".count.cat-compensated a")), chromedp.WaitVisible(chromedp.CSS("table.sagas tbody tr")))
	if got := eval(`[...document.querySelectorAll("table.sagas tbody tr .state")].every(e => e.textContent === "Compensated")`); got != true {
		t.Fatalf("the compensated filter shows other sagas")
	}
	run("open it", chromedp.Click(chromedp.CSS("table.sagas tbody th a")), chromedp.WaitVisible(chromedp.CSS("svg.diagram")))
	if got := text("#current-state"); got != "Compensated" {
		t.Fatalf("the saga opened is %q", got)
	}
	if eval(`!!document.querySelector('svg.diagram g.state.current[data-state="Compensated"]')`) != true ||
		eval(`document.querySelectorAll('svg.diagram .edge.taken').length >= 3`) != true ||
		eval(`document.querySelectorAll('ol.timeline li').length >= 4`) != true {
		t.Fatal("the diagram does not highlight the current state and the path, or the journal is short")
	}
	screenshot(t, ctx, shots, "saga")

	// The dead letters: replay the cancel of o-ghost.
	run("dead letters", chromedp.Navigate(base+"/ui/dlq"), chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/dlq/orders.inbox.dlq"]`)),
		chromedp.Click(chromedp.CSS(`a[href="/ui/dlq/orders.inbox.dlq"]`)), chromedp.WaitVisible(chromedp.CSS(`li.letter[data-key="o-garbage"]`)),
		chromedp.WaitVisible(chromedp.CSS(`li.letter[data-key="o-ghost"]`)), chromedp.Click(chromedp.CSS(`li.letter[data-key="o-ghost"] summary`)),
		chromedp.WaitVisible(chromedp.CSS(`li.letter[data-key="o-ghost"] button.replay`)))
	screenshot(t, ctx, shots, "dead-letters")
	// Keys are often personal data: no link carries one in its URL.
	if eval(`document.querySelectorAll('a[href*="key="]').length === 0`) != true {
		t.Fatal("a dead letter's key is in a link's URL")
	}
	run("replay", chromedp.Click(chromedp.CSS(`li.letter[data-key="o-ghost"] button.replay`)), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	screenshot(t, ctx, shots, "confirm")
	run("confirm", chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS("#result")))
	if got := text("#result"); !strings.Contains(got, "Replayed 1 letter(s)") {
		t.Fatalf("replay result %q", got)
	}
	screenshot(t, ctx, shots, "replayed")
	run("back to the letters", chromedp.Click(chromedp.CSS(`a[href="/ui/dlq/orders.inbox.dlq"]`)), chromedp.WaitVisible(chromedp.CSS(`li.letter[data-key="o-garbage"]`)))
	if eval(`!!document.querySelector('li.letter[data-key="o-ghost"]')`) != false {
		t.Fatal("the replayed letter is still listed")
	}

	// Cancel the saga in flight; it compensates.
	run("open the waiting saga", chromedp.Navigate(base+"/ui/sagas/orders/"+waiting), chromedp.WaitVisible(chromedp.CSS("#cancel")))
	if got := text("#timer"); !strings.Contains(got, "times out at") {
		t.Errorf("the pending timeout is not shown: %q", got)
	}
	run("cancel", chromedp.Click(chromedp.CSS("#cancel")), chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS(".note")))
	for deadline := time.Now().Add(20 * time.Second); text("#current-state") != "Compensated"; {
		if time.Now().After(deadline) {
			t.Fatalf("the cancelled saga %s is %q, not Compensated", waiting, text("#current-state"))
		}
		time.Sleep(200 * time.Millisecond)
		run("reload", chromedp.Navigate(base+"/ui/sagas/orders/"+waiting), chromedp.WaitVisible(chromedp.CSS("#current-state")))
	}
	if got := text("ol.timeline"); !strings.Contains(got, "by sagapipe/console") {
		t.Errorf("the journal does not name the console as who cancelled:\n%s", got)
	}
	screenshot(t, ctx, shots, "saga-cancelled")

	// The live view.
	run("live", chromedp.Navigate(base+"/ui/live"), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	if n := eval(`document.querySelectorAll("svg.chart").length`); n != 5.0 {
		t.Errorf("%v charts, want 5", n)
	}
	screenshot(t, ctx, shots, "live")

	// A phone: nothing sticks out of the screen but what scrolls inside
	// its box (tables, the diagram).
	overflow := `[...document.querySelectorAll("body *")].filter(e => !e.closest(".scroll") && e.getBoundingClientRect().right > 391).map(e => e.tagName + "." + e.className)`
	for _, page := range []string{"/ui/sagas/orders", "/ui/dlq/orders.inbox.dlq?all=1", "/ui/live", "/ui/sagas/orders/" + waiting} {
		run("phone "+page, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(base+page),
			chromedp.WaitVisible(chromedp.CSS("main h1")))
		if got := eval(overflow); len(got.([]any)) > 0 {
			t.Errorf("on a 390 px screen these stick out of %s: %v", page, got)
		}
	}
	screenshot(t, ctx, shots, "saga-phone")
	t.Logf("screenshots in %s", shots)
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		code, body := do(t, "GET", base+"/readyz", "", "")
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz %d %v", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
