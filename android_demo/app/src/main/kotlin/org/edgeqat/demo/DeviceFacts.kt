package org.edgeqat.demo

import android.app.ActivityManager
import android.content.Context
import android.os.Build
import org.edgeqat.bundlecore.AppInfo
import org.edgeqat.bundlecore.DeviceInfo

/** The device and app fields of the results file, filled as docs/device_results.md says. */
object DeviceFacts {
  const val EXECUTORCH_VERSION = "1.4.1"  // app/build.gradle.kts: org.pytorch:executorch-android

  fun device(context: Context): DeviceInfo {
    val memory = ActivityManager.MemoryInfo()
    (context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(memory)
    val soc = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else null
    return DeviceInfo(
        manufacturer = Build.MANUFACTURER,
        model = Build.MODEL,
        osVersion = "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
        soc = soc,
        cpuCores = Runtime.getRuntime().availableProcessors(),
        ramBytes = memory.totalMem,
    )
  }

  fun app(context: Context): AppInfo {
    val version = context.packageManager.getPackageInfo(context.packageName, 0).versionName ?: "unknown"
    return AppInfo(appVersion = version, executorchVersion = EXECUTORCH_VERSION)
  }
}
