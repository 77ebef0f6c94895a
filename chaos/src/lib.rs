//! Failover drills for berth clusters: starting real nodes, injecting faults, and
//! checking invariants over the recorded history. The drill runner arrives with the
//! cluster; this crate holds its place in the workspace until then.
