// Package trips is a second example saga, written from the README alone:
// a trip books its flight and hotel at once, then bills the customer; a
// full hotel or a declined charge cancels what was booked. Its
// participants run on the participant package.
package trips
