#include "trace/trace-system_vmfork.h"
