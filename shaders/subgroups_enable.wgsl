// Composed first in front of a subgroup-tier shader (a directive must precede every declaration, and
// helpers are placed ahead of the file that includes them). Needs the device feature 'subgroups'.
enable subgroups;
// Subgroup operations must run where every lane of the subgroup takes the same path. The analysis
// behind this diagnostic proves uniformity over the whole workgroup, which a kernel that hands each
// subgroup its own rows (attention_subgroup.wgsl) never has, although each subgroup's path is its own
// and uniform. Each kernel states in its header why its subgroup operations are subgroup-uniform.
diagnostic(off, subgroup_uniformity);
