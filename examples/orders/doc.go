// Package orders is the reference saga: an order reserves inventory, charges
// the payment and schedules the shipment, and compensates the finished steps
// in reverse when one fails.
//
// This package holds the saga's Avro schemas (schemas/*.avsc, embedded) and
// their Go types. The saga definition and the three participant services
// (inventory, payment, shipping) build on them.
package orders
