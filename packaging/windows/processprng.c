/* For testing under Wine 8.0 only; never shipped (packaging/windows/build.py).
 *
 * cryptography's Rust core (and pydantic-core) import ProcessPrng from bcryptprimitives.dll,
 * which Windows 10 and later have and Wine 8.0 does not: without it they do not load. This
 * bcryptprimitives.dll, put into the build's Wine prefix, gives ProcessPrng from
 * RtlGenRandom (advapi32's SystemFunction036), the system's own random source. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG part = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, part))
            return FALSE;
        data += part;
        length -= part;
    }
    return TRUE;
}
