#include "libdemo.h"

#ifndef LIBVERSION
#error "compile with -DLIBVERSION=\"...\""
#endif

const char *demo_lib_version(void)
{
	return LIBVERSION;
}
