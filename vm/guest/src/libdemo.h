/* libdemo.so: the shared library mapped by demo-lib (test/lib-v2 changes only it). */
const char *demo_lib_version(void);
