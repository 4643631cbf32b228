// Composed first in front of matmul_f16.wgsl (a directive must precede every declaration, and helpers
// are placed ahead of the file that includes them). Needs the device feature 'shader-f16'.
enable f16;
