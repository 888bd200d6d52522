// Package groups answers whether consumer groups have joined: what a
// harness or a demo waits for before it starts a clock or places orders.
package groups

import (
	"context"
	"maps"
	"slices"

	"github.com/twmb/franz-go/pkg/kadm"
)

// Waiting returns the first group of groups (each mapped to the topic it
// consumes) that is not yet stable with all partitions of its topic
// assigned, or "" when none is.
func Waiting(ctx context.Context, adm *kadm.Client, groups map[string]string, partitions int32) (string, error) {
	described, err := adm.DescribeGroups(ctx, slices.Sorted(maps.Keys(groups))...)
	if err != nil {
		return "", err
	}
	for _, group := range slices.Sorted(maps.Keys(groups)) {
		d, ok := described[group]
		if !ok || d.Err != nil || d.State != "Stable" || len(d.AssignedPartitions()[groups[group]]) < int(partitions) {
			return group, nil
		}
	}
	return "", nil
}
