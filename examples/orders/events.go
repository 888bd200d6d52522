package orders

import (
	"embed"
	"time"

	"github.com/sagapipe/sagapipe/saga"
)

//go:embed schemas/*.avsc
var schemaFiles embed.FS

func avsc(name string) string {
	b, err := schemaFiles.ReadFile("schemas/" + name + ".avsc")
	if err != nil {
		panic("orders: missing embedded schema " + name + ": " + err.Error())
	}
	return string(b)
}

// OrderPlacedSchema is the Avro schema of OrderPlaced.
var OrderPlacedSchema = avsc("order_placed")

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

// OrderData is the saga's data: what it knows of one order.
type OrderData struct {
	OrderID     string `avro:"order_id"`
	CustomerID  string `avro:"customer_id"`
	SKU         string `avro:"sku"`
	Quantity    int32  `avro:"quantity"`
	AmountCents int64  `avro:"amount_cents"`
	Express     bool   `avro:"express"`
	PaymentID   string `avro:"payment_id"`
	TrackingID  string `avro:"tracking_id"`
	Failure     string `avro:"failure"`
}

// Inventory's messages.
type (
	ReserveInventory struct {
		OrderID  string `avro:"order_id"`
		SKU      string `avro:"sku"`
		Quantity int32  `avro:"quantity"`
	}
	InventoryReserved struct {
		OrderID  string `avro:"order_id"`
		SKU      string `avro:"sku"`
		Quantity int32  `avro:"quantity"`
	}
	InventoryRejected struct {
		OrderID string `avro:"order_id"`
		Reason  string `avro:"reason"`
	}
	ReleaseInventory struct {
		OrderID  string `avro:"order_id"`
		SKU      string `avro:"sku"`
		Quantity int32  `avro:"quantity"`
	}
	InventoryReleased struct {
		OrderID string `avro:"order_id"`
	}
)

// Payment's messages.
type (
	ChargePayment struct {
		OrderID     string `avro:"order_id"`
		CustomerID  string `avro:"customer_id"`
		AmountCents int64  `avro:"amount_cents"`
	}
	PaymentCharged struct {
		OrderID     string `avro:"order_id"`
		PaymentID   string `avro:"payment_id"`
		AmountCents int64  `avro:"amount_cents"`
	}
	PaymentDeclined struct {
		OrderID string `avro:"order_id"`
		Reason  string `avro:"reason"`
	}
	RefundPayment struct {
		OrderID     string `avro:"order_id"`
		PaymentID   string `avro:"payment_id"`
		AmountCents int64  `avro:"amount_cents"`
	}
	PaymentRefunded struct {
		OrderID     string `avro:"order_id"`
		AmountCents int64  `avro:"amount_cents"`
	}
)

// Shipping's messages.
type (
	ScheduleShipment struct {
		OrderID  string `avro:"order_id"`
		SKU      string `avro:"sku"`
		Quantity int32  `avro:"quantity"`
		Express  bool   `avro:"express"`
	}
	ShipmentScheduled struct {
		OrderID    string `avro:"order_id"`
		TrackingID string `avro:"tracking_id"`
	}
	ShipmentFailed struct {
		OrderID string `avro:"order_id"`
		Reason  string `avro:"reason"`
	}
)

// The saga's outcomes, announced on OutcomesTopic.
type (
	OrderConfirmed struct {
		OrderID    string `avro:"order_id"`
		PaymentID  string `avro:"payment_id"`
		TrackingID string `avro:"tracking_id"`
	}
	OrderRejected struct {
		OrderID string `avro:"order_id"`
		Reason  string `avro:"reason"`
	}
)

const ns = "sagapipe.examples.orders."

// The saga's event declarations: ce_type and schema of each message.
var (
	EvOrderPlaced       = saga.Event[OrderPlaced](OrderPlacedType, OrderPlacedSchema)
	EvReserveInventory  = saga.Event[ReserveInventory](ns+"ReserveInventory", avsc("reserve_inventory"))
	EvInventoryReserved = saga.Event[InventoryReserved](ns+"InventoryReserved", avsc("inventory_reserved"))
	EvInventoryRejected = saga.Event[InventoryRejected](ns+"InventoryRejected", avsc("inventory_rejected"))
	EvReleaseInventory  = saga.Event[ReleaseInventory](ns+"ReleaseInventory", avsc("release_inventory"))
	EvInventoryReleased = saga.Event[InventoryReleased](ns+"InventoryReleased", avsc("inventory_released"))
	EvChargePayment     = saga.Event[ChargePayment](ns+"ChargePayment", avsc("charge_payment"))
	EvPaymentCharged    = saga.Event[PaymentCharged](ns+"PaymentCharged", avsc("payment_charged"))
	EvPaymentDeclined   = saga.Event[PaymentDeclined](ns+"PaymentDeclined", avsc("payment_declined"))
	EvRefundPayment     = saga.Event[RefundPayment](ns+"RefundPayment", avsc("refund_payment"))
	EvPaymentRefunded   = saga.Event[PaymentRefunded](ns+"PaymentRefunded", avsc("payment_refunded"))
	EvScheduleShipment  = saga.Event[ScheduleShipment](ns+"ScheduleShipment", avsc("schedule_shipment"))
	EvShipmentScheduled = saga.Event[ShipmentScheduled](ns+"ShipmentScheduled", avsc("shipment_scheduled"))
	EvShipmentFailed    = saga.Event[ShipmentFailed](ns+"ShipmentFailed", avsc("shipment_failed"))
	EvOrderConfirmed    = saga.Event[OrderConfirmed](ns+"OrderConfirmed", avsc("order_confirmed"))
	EvOrderRejected     = saga.Event[OrderRejected](ns+"OrderRejected", avsc("order_rejected"))
	OrderDataSchema     = avsc("order_data")
)
