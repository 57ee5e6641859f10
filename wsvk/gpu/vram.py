"""How much memory an adapter has: wgpu does not say, so ask Vulkan directly (ctypes, read-only).

WebGPU exposes no memory size. On a Vulkan adapter the loader (libvulkan, which wgpu itself loads)
answers through three calls: create a bare instance, list the physical devices, read each one's
memory heaps. The adapter is matched by its PCI vendor and device ids (and its name when those are
shared, as by software drivers). Metal, D3D12 and a machine without the loader get None: callers
then fall back to the adapter's type.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_HEAP_DEVICE_LOCAL = 0x1          # VkMemoryHeapFlagBits
_NAME_OFFSET, _NAME_SIZE = 20, 256  # VkPhysicalDeviceProperties.deviceName
# VkPhysicalDeviceMemoryProperties: uint32 memoryTypeCount, VkMemoryType[32] (8 bytes each),
# uint32 memoryHeapCount (offset 260), then VkMemoryHeap[16] {uint64 size, uint32 flags} from 264
_HEAP_COUNT_OFFSET, _HEAPS_OFFSET, _HEAP_SIZE = 4 + 32 * 8, 4 + 32 * 8 + 4, 16


class _InstanceInfo(ctypes.Structure):  # VkInstanceCreateInfo, no layers or extensions
    _fields_ = [("sType", ctypes.c_int32), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.c_void_p), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


def parse_heaps(raw: bytes) -> list[tuple[int, bool]]:
    """[(size in bytes, device-local)] from a VkPhysicalDeviceMemoryProperties' bytes."""
    count = int.from_bytes(raw[_HEAP_COUNT_OFFSET:_HEAP_COUNT_OFFSET + 4], "little")
    heaps = []
    for i in range(min(count, 16)):
        o = _HEAPS_OFFSET + i * _HEAP_SIZE
        size = int.from_bytes(raw[o:o + 8], "little")
        flags = int.from_bytes(raw[o + 8:o + 12], "little")
        heaps.append((size, bool(flags & _HEAP_DEVICE_LOCAL)))
    return heaps


@functools.lru_cache(maxsize=None)
def vulkan_devices() -> tuple:
    """((vendor id, device id, name, device-local bytes), ...) for every Vulkan physical device;
    () without a loader or when Vulkan fails."""
    vk = None
    for name in ("libvulkan.so.1", "libvulkan.1.dylib", ctypes.util.find_library("vulkan")):  # as wgpu loads it
        try:
            vk = ctypes.CDLL(name) if name else None
        except OSError:
            continue
        if vk is not None:
            break
    if vk is None:
        return ()
    vp = ctypes.c_void_p
    vk.vkCreateInstance.argtypes = [ctypes.POINTER(_InstanceInfo), vp, ctypes.POINTER(vp)]
    vk.vkEnumeratePhysicalDevices.argtypes = [vp, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(vp)]
    vk.vkGetPhysicalDeviceProperties.argtypes = [vp, ctypes.c_char_p]
    vk.vkGetPhysicalDeviceMemoryProperties.argtypes = [vp, ctypes.c_char_p]
    vk.vkDestroyInstance.argtypes = [vp, vp]
    info, instance = _InstanceInfo(sType=1), vp()  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
    if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
        return ()
    try:
        count = ctypes.c_uint32(0)
        if vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None) != 0 or not count.value:
            return ()
        handles = (vp * count.value)()
        if vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles) not in (0, 5):  # 5: INCOMPLETE
            return ()
        out = []
        for h in handles[:count.value]:
            props, mem = ctypes.create_string_buffer(2048), ctypes.create_string_buffer(1024)  # sizes 824, 520
            vk.vkGetPhysicalDeviceProperties(h, props)
            vk.vkGetPhysicalDeviceMemoryProperties(h, mem)
            raw = props.raw
            vendor, device = int.from_bytes(raw[8:12], "little"), int.from_bytes(raw[12:16], "little")
            dev_name = raw[_NAME_OFFSET:_NAME_OFFSET + _NAME_SIZE].split(b"\0", 1)[0].decode("utf-8", "replace")
            local = sum(size for size, is_local in parse_heaps(mem.raw) if is_local)
            out.append((vendor, device, dev_name, local))
        return tuple(out)
    finally:
        vk.vkDestroyInstance(instance, None)


def device_memory(info: dict) -> int | None:
    """Bytes of device-local memory of the adapter wgpu describes with `info` (adapter.info), or
    None when it is not a Vulkan adapter or Vulkan does not list it."""
    if info.get("backend_type") != "Vulkan":
        return None
    vendor, device, name = info.get("vendor_id"), info.get("device_id"), info.get("device") or ""
    found = [d for d in vulkan_devices() if (d[0], d[1]) == (vendor, device)]
    if len(found) > 1:  # several cards of one model, or software drivers sharing ids: the name decides
        found = [d for d in found if d[2] == name] or found
        if len({d[3] for d in found}) > 1:
            return None
    return found[0][3] if found and found[0][3] > 0 else None
