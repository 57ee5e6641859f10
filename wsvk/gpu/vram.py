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

_u32, _ptr = ctypes.c_uint32, ctypes.c_void_p
HEAP_DEVICE_LOCAL = 0x1  # VkMemoryHeapFlagBits


class InstanceInfo(ctypes.Structure):  # VkInstanceCreateInfo, no layers or extensions
    _fields_ = [("sType", ctypes.c_int32), ("pNext", _ptr), ("flags", _u32), ("pApplicationInfo", _ptr),
                ("enabledLayerCount", _u32), ("ppEnabledLayerNames", _ptr), ("enabledExtensionCount", _u32),
                ("ppEnabledExtensionNames", _ptr)]


class DeviceProperties(ctypes.Structure):  # VkPhysicalDeviceProperties: its head, room for the rest
    _fields_ = [("apiVersion", _u32), ("driverVersion", _u32), ("vendorID", _u32), ("deviceID", _u32),
                ("deviceType", ctypes.c_int32), ("deviceName", ctypes.c_char * 256),
                ("rest", ctypes.c_ubyte * 2048)]  # the struct is 824 bytes on 64-bit Linux


class MemoryType(ctypes.Structure):
    _fields_ = [("propertyFlags", _u32), ("heapIndex", _u32)]


class MemoryHeap(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("flags", _u32)]


class MemoryProperties(ctypes.Structure):  # VkPhysicalDeviceMemoryProperties
    _fields_ = [("memoryTypeCount", _u32), ("memoryTypes", MemoryType * 32),
                ("memoryHeapCount", _u32), ("memoryHeaps", MemoryHeap * 16)]


def device_local_bytes(mem: MemoryProperties) -> int:
    """The sizes of the device-local heaps, summed."""
    heaps = mem.memoryHeaps[:min(mem.memoryHeapCount, 16)]
    return sum(h.size for h in heaps if h.flags & HEAP_DEVICE_LOCAL)


def _loader():
    for name in ("libvulkan.so.1", "libvulkan.1.dylib", ctypes.util.find_library("vulkan")):  # as wgpu loads it
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return None


@functools.lru_cache(maxsize=None)
def vulkan_devices() -> tuple:
    """((vendor id, device id, name, device-local bytes), ...) for every Vulkan physical device;
    () without a loader or when Vulkan fails."""
    vk = _loader()
    if vk is None:
        return ()
    vk.vkCreateInstance.argtypes = [ctypes.POINTER(InstanceInfo), _ptr, ctypes.POINTER(_ptr)]
    vk.vkEnumeratePhysicalDevices.argtypes = [_ptr, ctypes.POINTER(_u32), ctypes.POINTER(_ptr)]
    vk.vkGetPhysicalDeviceProperties.argtypes = [_ptr, ctypes.POINTER(DeviceProperties)]
    vk.vkGetPhysicalDeviceMemoryProperties.argtypes = [_ptr, ctypes.POINTER(MemoryProperties)]
    vk.vkDestroyInstance.argtypes = [_ptr, _ptr]
    info, instance = InstanceInfo(sType=1), _ptr()  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
    if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
        return ()
    try:
        count = _u32(0)
        if vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None) != 0 or not count.value:
            return ()
        handles = (_ptr * count.value)()
        if vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles) not in (0, 5):  # 5: INCOMPLETE
            return ()
        out = []
        for h in handles[:count.value]:
            props, mem = DeviceProperties(), MemoryProperties()
            vk.vkGetPhysicalDeviceProperties(h, ctypes.byref(props))
            vk.vkGetPhysicalDeviceMemoryProperties(h, ctypes.byref(mem))
            out.append((props.vendorID, props.deviceID, props.deviceName.decode("utf-8", "replace"),
                        device_local_bytes(mem)))
        return tuple(out)
    finally:
        vk.vkDestroyInstance(instance, None)


def device_memory(info: dict, devices: tuple | None = None) -> int | None:
    """Bytes of device-local memory of the adapter wgpu describes with `info` (adapter.info), or
    None when it is not a Vulkan adapter or Vulkan does not list it (devices: vulkan_devices())."""
    if info.get("backend_type") != "Vulkan":
        return None
    vendor, device, name = info.get("vendor_id"), info.get("device_id"), info.get("device") or ""
    found = [d for d in (vulkan_devices() if devices is None else devices) if (d[0], d[1]) == (vendor, device)]
    if len(found) > 1:  # several cards of one model, or software drivers sharing ids: the name decides
        found = [d for d in found if d[2] == name] or found
        if len({d[3] for d in found}) > 1:
            return None
    return found[0][3] if found and found[0][3] > 0 else None
