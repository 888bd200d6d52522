package orders

import (
	_ "embed"
	"time"
)

// OrderPlacedSchema is the Avro schema of OrderPlaced.
//
//go:embed schemas/order_placed.avsc
var OrderPlacedSchema string

// OrderPlacedType is OrderPlaced's event type (ce_type).
const OrderPlacedType = "sagapipe.examples.orders.OrderPlaced"

// OrderPlaced starts the orders saga.
type OrderPlaced struct {
	OrderID        string    `avro:"order_id"`
	CustomerID     string    `avro:"customer_id"`
	SKU            string    `avro:"sku"`
	Quantity       int32     `avro:"quantity"`
	UnitPriceCents int64     `avro:"unit_price_cents"`
	TotalCents     int64     `avro:"total_cents"`
	Currency       string    `avro:"currency"`
	PlacedAt       time.Time `avro:"placed_at"`
	Express        bool      `avro:"express"`
	Note           *string   `avro:"note"`
}
