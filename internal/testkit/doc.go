// Package testkit holds what the tests of several packages share.
package testkit
