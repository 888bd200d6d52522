package registry_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/sagapipe/sagapipe/internal/registry"
)

// The registry refuses a schema its subject's compatibility level does not
// allow (FULL_TRANSITIVE by default), naming the field, as Confluent's does.
func Example() {
	reg, err := registry.New()
	if err != nil {
		panic(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()

	register := func(schema string) {
		body := `{"schema":` + fmt.Sprintf("%q", schema) + `}`
		resp, err := http.Post(srv.URL+"/subjects/shop.Order/versions", "application/vnd.schemaregistry.v1+json", strings.NewReader(body))
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, strings.Contains(string(answer), "sku"))
	}
	register(`{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"}]}`)
	// A new field without a default: a reader on it cannot read the data before it.
	register(`{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"sku","type":"string"}]}`)
	// Output:
	// 200 false
	// 409 true
}
