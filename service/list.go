package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sagapipe/sagapipe/console"
	"github.com/sagapipe/sagapipe/saga"
)

// SagaList is GET /api/sagas/{name}: a page of the saga's sagas, sorted by
// ID, and the counts of all of them by state category.
type SagaList struct {
	Saga string `json:"saga"`
	console.Page
}

// listTimeout bounds reading a saga's state topic for a list.
const listTimeout = 20 * time.Second

// listSagas is GET /api/sagas/{name}?state=&q=&limit=&after=: state is a
// category (in_flight, completed, compensated, compensation_failed) or a
// state's name, q a part of the ID, after the last ID of the previous page
// (the answer's next), limit the page size (default 50, at most 500).
func (s *Service) listSagas(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	q := console.Query{State: r.FormValue("state"), Search: r.FormValue("q"), After: r.FormValue("after")}
	if l := r.FormValue("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("limit %q is not a positive integer", l), Field: "limit"})
			return
		}
		q.Limit = n
	}
	page, err := s.sagaPage(r.Context(), name, q)
	switch {
	case errors.Is(err, errUnknownSaga):
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no saga named %q is registered", name)})
	case err != nil:
		writeJSON(w, http.StatusBadGateway, apiError{Error: err.Error()})
	default:
		writeJSON(w, http.StatusOK, SagaList{Saga: name, Page: page})
	}
}

// sagaPage lists a page of saga name's sagas from its state topic (the
// live ones and the closed ones within their retention).
func (s *Service) sagaPage(ctx context.Context, name string, q console.Query) (console.Page, error) {
	if _, ok := s.sagas[name]; !ok {
		return console.Page{}, errUnknownSaga
	}
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	all, err := saga.States(ctx, s.clientOpts, s.serde, name)
	if err != nil {
		return console.Page{}, err
	}
	page := console.Page{Sagas: []console.SagaSummary{}}
	limit := console.PageLimit(q.Limit)
	for _, st := range all { // sorted by ID
		page.Counts.Add(st.State)
		category := console.Category(st.State)
		if (q.State != "" && q.State != category && q.State != st.State) || !strings.Contains(st.ID, q.Search) {
			continue
		}
		page.Matching++
		if q.After != "" && st.ID <= q.After {
			continue
		}
		if len(page.Sagas) == limit {
			page.Next = page.Sagas[limit-1].ID
			continue
		}
		page.Sagas = append(page.Sagas, console.SagaSummary{ID: st.ID, State: st.State, Category: category, Since: st.Since, Closed: st.Closed})
	}
	return page, nil
}
