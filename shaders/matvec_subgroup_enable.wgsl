// Composed first in front of matvec_subgroup.wgsl (a directive must precede every declaration, and
// helpers are placed ahead of the file that includes them). Needs the device feature 'subgroups'.
enable subgroups;
